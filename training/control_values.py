"""The face controls as users spell them (emotion, level, person), parsed once for every command.

The streamer's flags and live controls, `emotalk-infer` and the engine's `Controls` all accept the
same spellings and refuse bad values with the same one-line errors. Free of PyTorch.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from .errors import UserError

LEVELS = {"low": 0.0, "high": 1.0}
# The level that follows the voice's arousal, from low to half way up (engine/arousal.py)
FOLLOW_VOICE = "voice"
# The face shown unless the user picks an emotion: the first of these the model has a prototype for
# (docs/model.md#emotion: on real voices the detected emotion is not yet right often enough to show).
CALM_FACES = ("calm", "neutral")
DEFAULT_EMOTION_HELP = "calm, or auto for a model without emotion prototypes"
# RAVDESS (our corpus) and the official classifier spell three emotions differently.
_SAME_EMOTION = {"disgust": "disgusted", "fear": "fearful", "surprise": "surprised"}


def _canonical(label: str) -> str:
    key = label.strip().lower()
    return _SAME_EMOTION.get(key, key)


def emotion_index(name: str, labels: Sequence[str]) -> int | None:
    """Index of emotion `name` among a model's labels, by name (case and RAVDESS/official spelling
    insensitive); None where the model has no such label."""
    wanted = _canonical(name)
    return next((i for i, label in enumerate(labels) if _canonical(label) == wanted), None)


def parse_emotion(text: str, labels: Sequence[str]) -> tuple[int | None, float]:
    """`auto` -> (None, 0.0): the voice decides. `LABEL[:STRENGTH]` -> (label index, strength in [0, 1]),
    strength 1.0 when omitted."""
    if text.strip().lower() == "auto":
        return None, 0.0
    name, _, strength_text = text.partition(":")
    index = emotion_index(name, labels)
    if index is None:
        raise UserError(f"unknown emotion {name!r}: use auto or one of {', '.join(labels)}, "
                        f"optionally with a strength, e.g. {labels[0]}:0.7")
    if not strength_text:
        return index, 1.0
    try:
        strength = float(strength_text)
    except ValueError:
        strength = math.nan
    if not 0.0 <= strength <= 1.0:
        raise UserError(f"emotion strength {strength_text!r} is not a number between 0 and 1, "
                        f"e.g. {labels[index]}:0.7")
    return index, strength


def default_emotion(labels: Sequence[str], present: Sequence[bool]) -> str:
    """The emotion control's default for a model: a calm face where it has one, else the voice's."""
    for name in CALM_FACES:
        index = emotion_index(name, labels)
        if index is not None and present[index]:
            return labels[index]
    return "auto"


def auto_strength(labels: Sequence[str], present: Sequence[bool]) -> float:
    """The override strength under `auto`: 1 where the model has a calm face, so that it shows the
    detected emotion in proportion to its confidence over the calm face (`EmoTalk.auto_target`);
    0 for a model without prototypes (an official import), whose face the voice's own features set."""
    return 0.0 if default_emotion(labels, present) == "auto" else 1.0


def calm_row(labels: Sequence[str], present: Sequence[bool]) -> list[float]:
    """The one-hot row of the model's calm face (all zeros where it has none): the rest of `auto`'s face."""
    setting = default_emotion(labels, present)
    return [float(setting == label) for label in labels]


def default_level(emotion: str) -> str:
    """The emotion level where none is given: for a calm or neutral face, the voice's arousal (a
    calm face is one of low intensity; with "high" calm speakers got raised brows,
    docs/results.md#real-voices), high for a named emotion or the voice's own."""
    return FOLLOW_VOICE if emotion.split(":")[0].strip().lower() in CALM_FACES else "high"


def parse_level(text: str | float) -> float | str:
    """Emotion level: `low` = 0, `high` = 1, a number between for a blend of the two, or `voice`
    (`FOLLOW_VOICE`): from low up to half way as the voice is more aroused than its usual."""
    key = str(text).strip().lower()
    if key in LEVELS:
        return LEVELS[key]
    if key == FOLLOW_VOICE:
        return FOLLOW_VOICE
    try:
        level = float(key)
    except ValueError:
        level = math.nan
    if not 0.0 <= level <= 1.0:
        raise UserError(f"emotion level {text!r} is not low, high, voice or a number between 0 and 1")
    return level


def parse_person(text: str | int, n_persons: int = 24) -> int:
    """Speaking style: one of the model's `n_persons` training speakers, 0-based."""
    try:
        person = int(str(text).strip())
    except ValueError:
        person = -1
    if not 0 <= person < n_persons:
        raise UserError(f"person {text!r} is not a whole number from 0 to {n_persons - 1}")
    return person


def check_prototype(present: Sequence[bool], labels: Sequence[str], label: int) -> None:
    """`present[i]`: label i has a prototype. Refuse an override towards `label` without one."""
    if not any(present):
        raise UserError("this model has no emotion prototypes (an official import, or trained without "
                        "them): use --emotion auto, or a model trained by emotalk-train")
    if not present[label]:
        raise UserError(f"this model has no emotion prototype for {labels[label]!r}: "
                        "its training data had no such clips; choose another emotion or auto")
