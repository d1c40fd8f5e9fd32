"""The calm face's intensity follows the voice's arousal (the emotion level `voice`, the default).

The voice's own emotion is not yet right often enough on real voices to show (docs/model.md#emotion),
so a stream shows a calm face unless told otherwise. Its emotion level is not fixed: it rises as the
voice grows more aroused than its speaker's usual. Aroused speech is louder and higher (anger, joy,
fear and surprise raise intensity and F0; calm and sadness lower them: Juslin & Laukka 2003, Scherer
2003), each measured against the speaker's own, so neither the microphone's gain nor a naturally
high or loud voice counts:

    level = LEVEL_MAX * min(max(louder / SPAN_DB, 0) + max(higher / SPAN_SEMITONES, 0), 1)

`louder` is the mean level in dB of the voiced frames over about `RECENT_S` less their mean over
the first `USUAL_S` and a running mean over as long after (`vocal_effort.VoicedLevel`); `higher`
the same of the F0 in semitones of every third voiced frame, where it is periodic (`frame_pitch`).
The level holds through pauses. `LEVEL_MAX` keeps the calm face calm: at level 1 it raised the
brows to 0.16 on calm speech, at 0.5 to 0.11 (issue 11's bound is 0.15).

A frame is decoded at the level reached after the frame before it (the engine feeds the level into
the step before it hears that step's frames), which `decoder_levels` reproduces for a whole clip.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache, partial

import numpy as np

from .vocal_effort import RunningMean, VoicedLevel, frame_level, window

LEVEL_MAX = 0.5  # the level of the most aroused voice
SPAN_DB = 6.0  # this much louder than the speaker's usual reaches LEVEL_MAX
SPAN_SEMITONES = 4.0  # as does this much higher
RECENT_S = 1.0  # time constant of the voice's recent level
USUAL_S = 10.0  # time constant of the speaker's usual level
PITCH_HZ = (70.0, 400.0)  # the F0 range searched
PERIODIC = 0.5  # a frame is pitched where its normalised autocorrelation reaches this
NEAR_BEST = 0.9  # the shortest period within this of the best one (not an octave below)
DECIMATE = 2  # the pitch is searched at 8 kHz: a period to 5% at 400 Hz, 1% at 100 Hz
PITCH_EVERY = 3  # the F0 of every third voiced frame: plenty for a mean over a second, a third of the work


def frame_pitch(audio: np.ndarray, first: int, frame: int, fps: int, sample_rate: int) -> float | None:
    """F0 in semitones above 100 Hz of frame `frame`'s sound (the window of `vocal_effort.window`),
    None where it is not periodic: the shortest lag whose autocorrelation, corrected for the
    shrinking overlap, is a peak within `NEAR_BEST` of the best in `PITCH_HZ`."""
    start, end = window(frame, fps, sample_rate)
    part = audio[max(start - first, 0):max(end - first, 0):DECIMATE]  # speech's F0 and its low harmonics
    rate = sample_rate // DECIMATE
    lags, correction, size = _lag_search(len(part), rate)
    if lags is None:
        return None
    spectrum = np.fft.rfft(part - part.sum() / len(part), size)
    corr = np.fft.irfft(spectrum.real ** 2 + spectrum.imag ** 2, size)
    if corr[0] <= 0.0:
        return None
    around = corr[lags[0] - 1:lags[-1] + 2] * correction / corr[0]  # one lag either side of the search
    unbiased = around[1:-1]
    best = unbiased.max()
    if best < PERIODIC:
        return None
    peaks = np.flatnonzero((unbiased >= NEAR_BEST * best) & (unbiased >= around[:-2]) & (unbiased >= around[2:]))
    lag = lags[peaks[0]] if peaks.size else lags[unbiased.argmax()]
    return 12.0 * math.log2(rate / lag / 100.0)


@lru_cache(maxsize=8)
def _lag_search(n: int, sample_rate: int) -> tuple[np.ndarray | None, np.ndarray, int]:
    """For a window of `n` samples: the lags searched, the overlap correction n / (n - lag) of them
    and one either side, and the FFT size that keeps the autocorrelation from wrapping (None: too
    short for two periods of the lowest F0)."""
    shortest, longest = int(sample_rate / PITCH_HZ[1]), int(sample_rate / PITCH_HZ[0])
    if n < 2 * longest:
        return None, np.zeros(0), 0
    lags = np.arange(shortest, longest + 1)
    around = np.arange(shortest - 1, longest + 2)
    return lags, n / (n - around), 1 << (n + longest + 1).bit_length()


class Arousal:
    """One speaker's recent and usual level, frame by frame, and the emotion level they give."""

    __slots__ = ("_recent", "_usual", "_recent_pitch", "_usual_pitch", "_voiced", "level")

    def __init__(self, fps: int):
        self._recent = VoicedLevel(fps, RECENT_S)
        self._usual = VoicedLevel(fps, USUAL_S)
        self._recent_pitch = RunningMean(RECENT_S * fps / PITCH_EVERY)
        self._usual_pitch = RunningMean(USUAL_S * fps / PITCH_EVERY)
        self._voiced = 0
        self.level = 0.0  # the level the next frame is decoded at

    def hear(self, db: float | None, pitch: Callable[[], float | None]) -> None:
        """Take the next frame's sound level in dB and a way to its F0 (`frame_pitch`), only
        asked of voiced frames; digital silence (None) changes nothing."""
        if db is None:
            return
        self._recent.hear(db)
        if not self._usual.hear(db):
            return
        self._voiced += 1
        semitones = pitch() if self._voiced % PITCH_EVERY == 1 else None
        if semitones is not None:
            self._recent_pitch.add(semitones)
            self._usual_pitch.add(semitones)
        louder = self._recent.level - self._usual.level
        higher = self._recent_pitch.value - self._usual_pitch.value
        self.level = LEVEL_MAX * min(max(louder / SPAN_DB, 0.0) + max(higher / SPAN_SEMITONES, 0.0), 1.0)


def decoder_levels(audio: np.ndarray, frames: int, fps: int, sample_rate: int) -> np.ndarray:
    """(frames,) the level each frame of a whole clip is decoded at, as a stream decodes it."""
    audio = np.asarray(audio, dtype=np.float32)
    arousal = Arousal(fps)
    levels = np.zeros(frames, dtype=np.float32)
    for frame in range(frames - 1):
        arousal.hear(frame_level(audio, 0, frame, fps, sample_rate), partial(frame_pitch, audio, 0, frame, fps, sample_rate))
        levels[frame + 1] = arousal.level
    return levels
