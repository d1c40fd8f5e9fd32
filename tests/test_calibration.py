"""Temperature scaling and the expected calibration error."""
from __future__ import annotations

import numpy as np

from emotalk_stream.training.calibration import expected_calibration_error, fit_temperature, softmax


def sampled(temperature: float, n: int = 4000, classes: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / temperature): that temperature is calibrated."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, size=(n, classes))
    p = softmax(logits, temperature)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return logits, labels


def test_the_fitted_temperature_recovers_the_one_the_labels_were_drawn_with():
    for true in (0.5, 1.0, 3.0):
        logits, labels = sampled(true)
        assert abs(np.log(fit_temperature(logits, labels) / true)) < 0.15


def test_calibration_lowers_the_error_of_an_over_confident_classifier():
    logits, labels = sampled(3.0)  # confident logits, labels drawn as if three times softer
    raw = expected_calibration_error(softmax(logits), labels)
    fitted = expected_calibration_error(softmax(logits, fit_temperature(logits, labels)), labels)
    assert raw > 0.2 and fitted < 0.05


def test_the_error_is_zero_when_confidence_equals_accuracy_and_large_when_not():
    probabilities = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probabilities, np.array([0, 0, 0, 1])) < 1e-12
    assert abs(expected_calibration_error(probabilities, np.array([1, 1, 1, 1])) - 0.75) < 1e-12
