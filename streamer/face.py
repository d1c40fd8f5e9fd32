"""Post-processing of the output frames: causal smoothing and natural procedural blinks, and the
live settings of the face (these and the amounts of head and eye motion, `head_motion.py`).

Both run on the audio clock (frame times), never the wall clock, so a file streamed with
`--no-pace` gives exactly the frames a live run of the same audio would.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..training.blinks import Blinker
from ..training.errors import UserError

MAX_SMOOTHING_S = 1.0
MAX_MOTION = 2.0  # head and eye motion: 1 is the natural amount, 2 twice as much; more looks restless


def check_smoothing(seconds: float, name: str = "smoothing", shown: object = None) -> float:
    """`seconds` if it is a smoothing time from 0 to MAX_SMOOTHING_S, else a `UserError` that names
    `name` and the value as given (`shown`, default `seconds`)."""
    if not (math.isfinite(seconds) and 0.0 <= seconds <= MAX_SMOOTHING_S):
        raise UserError(f"{name} {seconds if shown is None else shown!r} is not a number of seconds "
                        f"from 0 to {MAX_SMOOTHING_S}")
    return seconds


def check_motion(amount: float, name: str, shown: object = None) -> float:
    """`amount` if it is an amount of head or eye motion from 0 (off) to MAX_MOTION, else a
    `UserError` that names `name` and the value as given (`shown`, default `amount`)."""
    if not (math.isfinite(amount) and 0.0 <= amount <= MAX_MOTION):
        raise UserError(f"{name} {amount if shown is None else shown!r} is not an amount from 0 (off) to "
                        f"{MAX_MOTION} (1: natural)")
    return amount


@dataclass(frozen=True)
class FaceSettings:
    """Live post-processing controls."""

    smoothing: float = 0.0  # time constant in seconds of a causal one-pole low-pass; 0 = off
    blink: bool = True
    # Speech-driven head motion and eye behaviour (head_motion.py): 0 off, 1 natural. On by default,
    # as blinks are: an avatar that only moves its mouth looks stiff (docs/streaming.md#head-and-eyes).
    head_motion: float = 1.0
    eye_motion: float = 1.0


class FacePost:
    """Smoothing, then blinks, then a clip to [0, 1], for frames at `fps` in time order."""

    def __init__(self, fps: int, settings: FaceSettings = FaceSettings(), seed: int = 0):
        self.fps = fps
        self.settings = settings
        self._blinker = Blinker(seed)
        self._state: np.ndarray | None = None

    def __call__(self, time: float, weights: np.ndarray) -> np.ndarray:
        tau = self.settings.smoothing
        if tau > 0 and self._state is not None:
            alpha = 1.0 - math.exp(-1.0 / (self.fps * tau))
            self._state = self._state + alpha * (weights - self._state)
        else:
            self._state = weights.astype(np.float32, copy=True)
        out = self._state.copy()
        if self.settings.blink:
            self._blinker.apply(time, out)
        else:
            self._blinker.closure(time)  # keep the blink schedule on the audio clock
        return np.clip(out, 0.0, 1.0).astype(np.float32)
