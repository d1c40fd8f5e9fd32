"""Emotion you can trust: temperature scaling of the emotion head, and its calibration error.

A classifier trained on synthetic voices is over-confident on voices it has not heard. One
temperature, fitted on clips of held-out voices (the corpus's cross-voice split), makes its
probabilities mean what they say (Guo et al. 2017, "On Calibration of Modern Neural Networks");
the expected calibration error (ECE) measures how far they are from that. Numpy only: the runtime
applies the temperature too.
"""
from __future__ import annotations

import numpy as np

ECE_BINS = 10
TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(20.0), 400))  # the search grid, log-spaced


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities over the last axis of `logits / temperature`."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    probabilities = softmax(logits, temperature)
    return float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels] + 1e-12)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of `labels` (a grid search: one
    parameter, and the likelihood is smooth in it)."""
    losses = [negative_log_likelihood(logits, labels, t) for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(losses))])


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their clips."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)
