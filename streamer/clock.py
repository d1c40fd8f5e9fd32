"""The frame clock: engine frames at the model's rate -> output frames at 30 or 60 fps.

Output frame j shows the audio at j / fps seconds; at 60 fps the frames between two model frames
are interpolated. N seconds of input give exactly ceil(N x fps) frames, as offline inference does
(`frame_count`): a frame is only released once the audio already received guarantees it exists.
"""
from __future__ import annotations

import numpy as np

from ..engine import Frame
from ..training.framing import frame_count


class FrameClock:
    def __init__(self, model_fps: int, fps: int, sample_rate: int):
        if fps % model_fps:
            raise ValueError(f"output rate {fps} must be a multiple of the model's {model_fps} fps")
        self.model_fps, self.fps, self.sample_rate = model_fps, fps, sample_rate
        self.next_index = 0  # next output frame
        self._frames: dict[int, np.ndarray] = {}  # model frames still needed, by index
        self._last_model = -1

    def frame_limit(self, samples: int) -> int:
        """Output frames that `samples` of audio hold: ceil(samples / rate x fps)."""
        return frame_count(samples, self.sample_rate, self.fps)

    def push(self, frame: Frame) -> None:
        self._frames[frame.index] = frame.weights
        self._last_model = frame.index

    def ready(self, samples: int, finished: bool = False) -> list[tuple[int, float, np.ndarray]]:
        """Output frames (index, time, weights) computable now, given `samples` of audio so far.

        `finished`: the input has ended and every model frame is pushed; the last model frame is
        held for output frames past it."""
        out = []
        limit = self.frame_limit(samples)
        while self.next_index < limit:
            j = self.next_index
            lo, rem = divmod(j * self.model_fps, self.fps)
            hi = lo + (rem > 0)
            if hi > self._last_model:
                if not finished or self._last_model < 0:
                    break
                lo, hi, rem = min(lo, self._last_model), self._last_model, 0
            weights = self._frames[lo]
            if rem:
                weights = weights + (rem / self.fps) * (self._frames[hi] - weights)
            out.append((j, j / self.fps, weights))
            self.next_index += 1
            needed = min((self.next_index * self.model_fps) // self.fps, self._last_model)
            for old in [k for k in self._frames if k < needed]:
                del self._frames[old]
        return out
