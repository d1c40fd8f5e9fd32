"""The jaw opens wider when the voice is louder than its speaker's usual: vocal effort.

The model hears its input through the level normaliser (training/input_level.py), which holds the
level steady so that the microphone's gain does not matter. It also flattens how much louder a
speaker gets within a phrase, and on real voices the jaw followed the loudness only at r 0.685.
Louder speech is spoken with the jaw further open, so each frame's jawOpen is scaled by how loud its
sound is against the speaker's own running level: `10 ** (EXPONENT * dB / 20)`, 1.32 at 6 dB above
it and 0.63 at 10 dB below. mouthClose is scaled with it, so the lip aperture (jawOpen - mouthClose)
keeps its closures on /p b m/. Measured against the stream's own level, the factor does not depend
on the microphone's gain either.

A frame's sound is the 1/fps of audio centred on its time, the window `emotalk-eval --voices`
measures loudness in; the engine has heard it when the frame comes out (its reach is 22.5 ms past
the frame at no look-ahead). The speaker's level is the mean level of the frames within
`VOICED_WITHIN_DB` of the recent peak (voice, not the pauses), over the first `BASELINE_S` and a
running mean after, so it follows a speaker who moves closer to the microphone. `frame_factors` computes it for a whole clip (offline inference);
`VocalEffort` frame by frame for a stream (the engine): both give the same factors.
"""
from __future__ import annotations

import math

import numpy as np

from ..training.blendshapes import INDEX

EXPONENT = 0.4  # 15 dB louder opens the jaw twice as far
RANGE_DB = (-20.0, 10.0)  # the loudness against the speaker's usual taken into account
# The speaker's usual: a syllable's nucleus sits this far above the mean level in dB of the voiced
# frames (the quieter consonants pull the mean down), so the jaw of speech at its usual loudness
# keeps the model's opening on average (the mean factor over the real recordings' speech: 1.0)
TYPICAL_ABOVE_MEAN_DB = 2.5
BASELINE_S = 3.0  # time constant of the speaker's running level
PEAK_FALL_DB_S = 10.0  # how fast the recent peak falls back
VOICED_WITHIN_DB = 25.0  # frames this close to the peak count towards the speaker's level
SCALED = [INDEX["jawOpen"], INDEX["mouthClose"]]


def window(frame: int, fps: int, sample_rate: int) -> tuple[int, int]:
    """[start, end) samples of frame `frame`'s sound: 1/fps centred on its time."""
    centre, half = frame * sample_rate / fps, sample_rate / fps / 2
    return round(centre - half), round(centre + half)


def frame_level(audio: np.ndarray, first: int, frame: int, fps: int, sample_rate: int) -> float | None:
    """RMS level in dB of frame `frame`'s window of `audio`, whose first sample is sample `first` of
    the stream (zeros outside it count as silence); None: the window is all zeros."""
    start, end = window(frame, fps, sample_rate)
    part = audio[max(start - first, 0):max(end - first, 0)]
    power = float(np.dot(part, part)) / (end - start)
    return 10.0 * math.log10(power) if power > 0.0 else None


class RunningMean:
    """The mean of the first `frames` values, then a running mean over about as many."""

    __slots__ = ("_frames", "count", "value")

    def __init__(self, frames: float):
        self._frames = frames
        self.count = 0
        self.value = 0.0

    def add(self, x: float) -> None:
        self.count += 1
        self.value += (x - self.value) / min(self.count, self._frames)


class VoicedLevel:
    """The mean level in dB of a voice's frames within `VOICED_WITHIN_DB` of its recent peak (the
    voice, not the pauses): the mean of the first `seconds`, then a running mean over about
    `seconds`, so it follows a speaker who moves closer to the microphone."""

    __slots__ = ("_fps", "_peak", "_mean")

    def __init__(self, fps: int, seconds: float):
        self._fps = fps
        self._peak = -math.inf
        self._mean = RunningMean(seconds * fps)

    @property
    def level(self) -> float:
        return self._mean.value

    @property
    def voiced(self) -> int:
        """Frames the level was taken from."""
        return self._mean.count

    def hear(self, db: float) -> bool:
        """Take the next frame's level in dB; True where it counts as the voice."""
        self._peak = max(db, self._peak - PEAK_FALL_DB_S / self._fps)
        if self._mean.count and self._mean.value <= self._peak - VOICED_WITHIN_DB:
            self._mean.count = 0  # the frames so far were a quiet start before the voice, not its level
        if db <= self._peak - VOICED_WITHIN_DB:
            return False
        self._mean.add(db)
        return True


class VocalEffort:
    """One speaker's running level, and each frame's factor for its jaw and lip closure."""

    __slots__ = ("_speaker",)

    def __init__(self, fps: int):
        self._speaker = VoicedLevel(fps, BASELINE_S)

    def factor(self, db: float | None) -> float:
        """The factor of the next frame, whose sound is at `db` (None: digital silence, left alone:
        the voice gate closes the mouth there)."""
        if db is None:
            return 1.0
        self._speaker.hear(db)
        if not self._speaker.voiced:
            return 1.0
        louder = db - self._speaker.level - TYPICAL_ABOVE_MEAN_DB
        return 10.0 ** (EXPONENT * min(max(louder, RANGE_DB[0]), RANGE_DB[1]) / 20.0)


def frame_factors(audio: np.ndarray, frames: int, fps: int, sample_rate: int) -> np.ndarray:
    """(frames,) the factor of every frame of a whole clip, as a stream gets them."""
    audio = np.asarray(audio, dtype=np.float32)
    effort = VocalEffort(fps)
    return np.array([effort.factor(frame_level(audio, 0, frame, fps, sample_rate)) for frame in range(frames)],
                    dtype=np.float32)


def apply_effort(weights: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """(T, 52) weights with jawOpen and mouthClose scaled by each frame's factor (T,), in place."""
    weights[:, SCALED] = np.clip(weights[:, SCALED] * factors[:, None], 0.0, 1.0)
    return weights
