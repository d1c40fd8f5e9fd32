"""Lower-face curves from espeak-ng phoneme events: visemes blended with coarticulation.

Each phoneme maps to a viseme: a target pose of the jaw, lips and tongue (ARKit weights). Poses are
blended with Cohen-Massaro dominance functions: every phoneme holds its dominance over its own
interval and lets it decay exponentially outside (faster after than before, so the mouth
anticipates the next sound). Dominance is set per phoneme and per channel group, so bilabials and
labiodentals force their lip closure while /t/, /k/ or /h/ barely constrain the lips and inherit
the rounding or spreading of the vowels around them ("coo" vs "key").
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import blendshapes

FPS = 30

# Channels moved by jaw height (and the tongue); every other channel follows the lip dominance.
JAW_GROUP = ("jawOpen", "mouthClose", "mouthLowerDownLeft", "mouthLowerDownRight",
             "mouthUpperUpLeft", "mouthUpperUpRight", "tongueOut")


def expand(pose: dict[str, float]) -> np.ndarray:
    """A 52-vector from names, where a name without Left/Right ("mouthSmile") sets both sides."""
    vector = np.zeros(blendshapes.COUNT)
    for name, value in pose.items():
        if name in blendshapes.INDEX:
            vector[blendshapes.INDEX[name]] = value
        else:
            vector[blendshapes.INDEX[name + "Left"]] = value
            vector[blendshapes.INDEX[name + "Right"]] = value
    return vector


@dataclass(frozen=True)
class Viseme:
    """A target pose and how strongly it holds it: dominance of the jaw and lip groups, and the
    decay rates (1/s) of that dominance before (anticipation) and after (carry-over) the phoneme."""

    pose: dict[str, float]
    jaw: float
    lips: float
    before: float = 18.0
    after: float = 22.0


VISEMES: dict[str, Viseme] = {
    "sil": Viseme({}, 2.5, 2.5, 20.0, 20.0),
    "PP": Viseme({"jawOpen": 0.04, "mouthClose": 0.22, "mouthPress": 0.6, "mouthRollLower": 0.25,
                  "mouthRollUpper": 0.18}, 5.0, 5.0, 35.0, 45.0),
    "FF": Viseme({"jawOpen": 0.08, "mouthRollLower": 0.55, "mouthUpperUp": 0.25, "mouthShrugUpper": 0.15,
                  "mouthFunnel": 0.05}, 2.5, 4.0, 30.0, 40.0),
    "TH": Viseme({"jawOpen": 0.14, "tongueOut": 0.4, "mouthLowerDown": 0.12, "mouthUpperUp": 0.08},
                 2.0, 2.5, 30.0, 35.0),
    "DD": Viseme({"jawOpen": 0.14, "mouthLowerDown": 0.1, "mouthStretch": 0.06}, 1.2, 0.35, 22.0, 25.0),
    "KK": Viseme({"jawOpen": 0.18, "mouthLowerDown": 0.06}, 1.0, 0.3, 22.0, 25.0),
    "HH": Viseme({"jawOpen": 0.2}, 0.15, 0.1, 30.0, 30.0),
    "CH": Viseme({"jawOpen": 0.1, "mouthFunnel": 0.45, "mouthPucker": 0.3, "mouthUpperUp": 0.18,
                  "mouthLowerDown": 0.18, "mouthShrugUpper": 0.1}, 1.5, 3.0, 20.0, 28.0),
    "SS": Viseme({"jawOpen": 0.06, "mouthStretch": 0.22, "mouthSmile": 0.08, "mouthLowerDown": 0.06,
                  "mouthUpperUp": 0.05}, 1.6, 1.2, 28.0, 32.0),
    "RR": Viseme({"jawOpen": 0.12, "mouthPucker": 0.35, "mouthFunnel": 0.25}, 1.0, 2.0, 20.0, 28.0),
    "WW": Viseme({"jawOpen": 0.06, "mouthPucker": 0.75, "mouthFunnel": 0.3}, 1.0, 3.5, 18.0, 28.0),
    "J": Viseme({"jawOpen": 0.1, "mouthStretch": 0.3, "mouthSmile": 0.12}, 1.0, 1.5),
    "AA": Viseme({"jawOpen": 0.68, "mouthLowerDown": 0.3, "mouthUpperUp": 0.1, "mouthStretch": 0.05},
                 1.5, 1.5),
    "AH": Viseme({"jawOpen": 0.5, "mouthLowerDown": 0.2}, 1.5, 1.5),
    "EH": Viseme({"jawOpen": 0.38, "mouthStretch": 0.25, "mouthLowerDown": 0.2, "mouthSmile": 0.06},
                 1.5, 1.5),
    "IH": Viseme({"jawOpen": 0.2, "mouthStretch": 0.3, "mouthSmile": 0.12, "mouthLowerDown": 0.08},
                 1.5, 1.5),
    "IY": Viseme({"jawOpen": 0.14, "mouthStretch": 0.42, "mouthSmile": 0.22, "mouthLowerDown": 0.08},
                 1.5, 1.8),
    "AO": Viseme({"jawOpen": 0.48, "mouthFunnel": 0.5, "mouthPucker": 0.15, "mouthLowerDown": 0.12},
                 1.5, 2.2, 12.0, 18.0),
    "OH": Viseme({"jawOpen": 0.32, "mouthFunnel": 0.55, "mouthPucker": 0.32}, 1.5, 2.2, 12.0, 18.0),
    "UH": Viseme({"jawOpen": 0.2, "mouthFunnel": 0.3, "mouthPucker": 0.35}, 1.5, 2.0, 12.0, 18.0),
    "UW": Viseme({"jawOpen": 0.1, "mouthPucker": 0.7, "mouthFunnel": 0.38}, 1.5, 2.5, 10.0, 18.0),
    "ER": Viseme({"jawOpen": 0.2, "mouthFunnel": 0.3, "mouthPucker": 0.22}, 1.5, 2.0, 12.0, 18.0),
    "SCHWA": Viseme({"jawOpen": 0.25, "mouthLowerDown": 0.08}, 1.2, 1.0),
}

# espeak-ng English mnemonics -> one viseme, or two for diphthongs (first half, second half).
# `;` marks palatalisation of the previous phoneme and has no shape of its own.
PHONEMES: dict[str, tuple[str, ...]] = {
    "p": ("PP",), "b": ("PP",), "m": ("PP",),
    "f": ("FF",), "v": ("FF",),
    "T": ("TH",), "D": ("TH",),
    "t": ("DD",), "d": ("DD",), "n": ("DD",), "l": ("DD",), "t#": ("DD",), "t2": ("DD",),
    "t[": ("DD",), "d#": ("DD",), "n-": ("DD",), "l#": ("DD",), "l/": ("DD",),
    "k": ("KK",), "g": ("KK",), "N": ("KK",), "x": ("KK",),
    "h": ("HH",), "?": ("HH",),
    "tS": ("CH",), "dZ": ("CH",), "S": ("CH",), "Z": ("CH",),
    "s": ("SS",), "z": ("SS",),
    "r": ("RR",), "r-": ("RR",),
    "w": ("WW",), "j": ("J",),
    "a": ("AA",), "aa": ("AA",), "A:": ("AA",), "A@": ("AA", "ER"), "A": ("AA",),
    "a#": ("AH",), "V": ("AH",),
    "E": ("EH",), "e": ("EH",), "e@": ("EH", "SCHWA"),
    "I": ("IH",), "I2": ("IH",), "I#": ("IH",), "i": ("IY",), "i:": ("IY",),
    "i@": ("IY", "SCHWA"), "i@3": ("IY", "SCHWA"),
    "0": ("AO",), "O": ("AO",), "O:": ("AO",), "O2": ("AO",), "O@": ("AO", "ER"), "o@": ("OH", "ER"),
    "U": ("UH",), "u:": ("UW",), "U@": ("UW", "SCHWA"),
    "3": ("ER",), "3:": ("ER",),
    "@": ("SCHWA",), "@2": ("SCHWA",), "@5": ("SCHWA",), "@L": ("SCHWA", "DD"),
    "eI": ("EH", "IY"), "aI": ("AA", "IY"), "aI@": ("AA", "IY"), "aU": ("AA", "UW"),
    "OI": ("AO", "IY"), "oU": ("OH", "UW"),
    ";": (),
}
VOWELS = frozenset(name for name, keys in PHONEMES.items() if keys and keys[0] in {
    "AA", "AH", "EH", "IH", "IY", "AO", "OH", "UH", "UW", "ER", "SCHWA"})
BILABIALS = frozenset({"p", "b", "m"})


def is_pause(name: str) -> bool:
    """espeak-ng pauses are `_`, `_:`, `_!` and the like."""
    return name.startswith("_")


def visemes_of(name: str) -> tuple[str, ...]:
    """Viseme keys of an espeak-ng mnemonic; unknown ones fall back by their first character."""
    if is_pause(name):
        return ("sil",)
    if name in PHONEMES:
        return PHONEMES[name]
    stem = name.rstrip("0123456789#:[/-;")
    if stem in PHONEMES:
        return PHONEMES[stem]
    return ("SCHWA",) if stem[:1] in "aeiouAEIOUV@03" else ("DD",)


# Pauses shorter than this barely open or close anything: espeak-ng puts zero-length `_` events
# between words, and a 30 ms gap must not snap the mouth shut.
_FULL_PAUSE_S = 0.12


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    name: str


def segments(times: Sequence[float], names: Sequence[str], end: float) -> list[Segment]:
    """Phoneme intervals from event start times; each lasts until the next event (or `end`)."""
    bounds = list(times[1:]) + [end]
    return [Segment(float(t), float(max(b, t)), n) for t, b, n in zip(times, bounds, names)]


def _keys(phones: Sequence[Segment], start: float, end: float) -> list[tuple[float, float, str, float]]:
    """(start, end, viseme, dominance scale) windows, with rest windows over the silences."""
    keys = [(start - 1.0, start, "sil", 1.0)]
    for seg in phones:
        parts = visemes_of(seg.name)
        if not parts:
            continue
        scale = 1.0
        if parts == ("sil",):
            scale = min(1.0, (seg.end - seg.start) / _FULL_PAUSE_S) ** 2
        step = (seg.end - seg.start) / len(parts)
        for i, key in enumerate(parts):
            keys.append((seg.start + i * step, seg.start + (i + 1) * step, key, scale))
    keys.append((end, end + 1.0, "sil", 1.0))
    return keys


def lower_face(phones: Sequence[Segment], speech_start: float, speech_end: float,
               frames: int, fps: int = FPS) -> np.ndarray:
    """(frames, 52) viseme curves at times k/fps; rest pose before `speech_start` and after `speech_end`.

    Only jaw, mouth and tongue channels are non-zero.
    """
    keys = _keys(phones, speech_start, speech_end)
    t = np.arange(frames) / fps
    starts = np.array([k[0] for k in keys])[:, None]
    ends = np.array([k[1] for k in keys])[:, None]
    visemes = [VISEMES[k[2]] for k in keys]
    scale = np.array([k[3] for k in keys])
    before = np.array([v.before for v in visemes])[:, None]
    after = np.array([v.after for v in visemes])[:, None]
    decay = np.exp(-before * np.clip(starts - t, 0.0, None) - after * np.clip(t - ends, 0.0, None))
    targets = np.stack([expand(v.pose) for v in visemes])  # (K, 52)
    jaw = np.isin(blendshapes.NAMES, JAW_GROUP)
    alpha = np.where(jaw, np.array([v.jaw for v in visemes])[:, None],
                     np.array([v.lips for v in visemes])[:, None]) * scale[:, None]  # (K, 52)
    dominance = decay[:, :, None] * alpha[:, None, :] + 1e-9  # (K, T, 52)
    return (dominance * targets[:, None, :]).sum(0) / dominance.sum(0)
