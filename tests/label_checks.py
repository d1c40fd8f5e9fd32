"""Checks on a corpus's labels that every speech engine's corpus must pass."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from emotalk_stream.training import blendshapes, visemes

JAW, CLOSE = blendshapes.INDEX["jawOpen"], blendshapes.INDEX["mouthClose"]
PRESS = [blendshapes.INDEX["mouthPressLeft"], blendshapes.INDEX["mouthPressRight"]]


def assert_bilabials_close_the_lips(clips: Iterable[tuple[np.ndarray, list]]) -> None:
    """(labels, alignment) pairs: at the middle of /p b m/ the lips press and the jaw rests, unlike
    in long open vowels."""
    closed, open_vowels = [], []
    for labels, alignment in clips:
        for start, end, name in alignment:
            frame = int(round((start + end) / 2 * 30))
            if name in visemes.BILABIALS:
                closed.append(labels[frame])
            elif visemes.visemes_of(name) == ("AA",) and end - start > 0.06:
                open_vowels.append(labels[frame])
    closed, open_vowels = np.array(closed), np.array(open_vowels)
    assert len(closed) >= 10 and len(open_vowels) >= 5
    assert closed[:, PRESS].mean() > 0.3 and closed[:, JAW].mean() < 0.15
    assert np.median(closed[:, JAW]) < np.median(open_vowels[:, JAW]) - 0.15
    assert closed[:, CLOSE].mean() > open_vowels[:, CLOSE].mean() + 0.1
