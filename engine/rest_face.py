"""The face relative to the model's own rest face: what avatars expect as "nothing happening".

On silence the bundled model does not rest at zeros: it keeps the jaw 0.09 open, smiles 0.15 and
raises the inner brows 0.07 (its calm face at rest, `Engine.rest_face`). Avatar apps calibrate
their rest pose as all zeros, so that offset shows as a mouth that never closes on /p b m/ and
brows that stay raised. Each frame is therefore shown relative to the rest face of its stream's
level and speaking style, with the calm face: `relative_to_rest` subtracts the rest weight through
a soft knee, so a weight at rest becomes 0.37 x rest, a weight far above it loses the full rest,
and the order of weights is kept (the jaw still follows the voice's loudness). A named emotion
keeps its own expression: it is measured from the calm rest face too. Measured on real voices in
docs/results.md#real-voices.
"""
from __future__ import annotations

import numpy as np

REST_SECONDS = 4.0  # silence fed to find the rest face: longer than every context of the model (3 s)
SMALLEST_REST = 1e-4  # below this a channel has no rest offset worth removing


def relative_to_rest(weights: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """(T, 52) weights in [0, 1] shown relative to `rest` (52,): w - rest (1 - exp(-w / rest)).

    Monotonic in w, 0 at 0, and w - rest for w well above rest, so nothing jumps."""
    rest = np.asarray(rest, dtype=np.float64)
    knee = np.where(rest > SMALLEST_REST, rest, 1.0)
    shifted = weights - np.where(rest > SMALLEST_REST, rest, 0.0) * (1.0 - np.exp(-weights / knee))
    return np.clip(shifted, 0.0, 1.0).astype(np.float32)
