"""Procedural blinks on the audio clock, shared by the streamer and `emotalk-infer`, so a streamed
take and an offline take of one file with one seed blink at the same frames.

People blink about 15-20 times a minute while talking; a blink lasts 100-300 ms and closes faster
than it opens.
"""
from __future__ import annotations

import math

import numpy as np

from .blendshapes import INDEX

BLINK_CHANNELS = (INDEX["eyeBlinkLeft"], INDEX["eyeBlinkRight"])
BLINK_MEAN_GAP_S = 3.5
BLINK_MIN_GAP_S = 1.2
BLINK_CLOSE_S = 0.07
BLINK_OPEN_S = 0.14


class Blinker:
    """Blink times drawn from a seeded random process on the audio clock."""

    def __init__(self, seed: int = 0):
        self._rng = np.random.default_rng(seed)
        self._start = self._gap(first=True)

    def _gap(self, first: bool = False) -> float:
        gap = BLINK_MIN_GAP_S + self._rng.exponential(BLINK_MEAN_GAP_S - BLINK_MIN_GAP_S)
        return gap * (0.5 if first else 1.0)

    def closure(self, time: float) -> float:
        """How closed the eyes are at `time` (0 open, 1 shut); times must not go backwards."""
        while time >= self._start + BLINK_CLOSE_S + BLINK_OPEN_S:
            self._start += BLINK_CLOSE_S + BLINK_OPEN_S + self._gap()
        t = time - self._start
        if t < 0:
            return 0.0
        if t < BLINK_CLOSE_S:
            return math.sin(0.5 * math.pi * t / BLINK_CLOSE_S)
        return 0.5 + 0.5 * math.cos(math.pi * (t - BLINK_CLOSE_S) / BLINK_OPEN_S)

    def apply(self, time: float, weights: np.ndarray) -> None:
        """Close the eyes of one frame (in place) at least as far as the blink at `time` does."""
        closure = self.closure(time)
        for channel in BLINK_CHANNELS:
            weights[channel] = max(weights[channel], closure)


def with_blinks(weights: np.ndarray, fps: int, seed: int = 0) -> np.ndarray:
    """(T, 52) frames at `fps` with the blinks of `seed`, as the streamer's face shows them."""
    blinker, out = Blinker(seed), weights.astype(np.float32, copy=True)
    for index, row in enumerate(out):
        blinker.apply(index / fps, row)
    return out
