"""Audio2Face-3D's ten emotion names <-> one model's emotion labels.

A2F-3D clients send and read emotions by A2F's names (amazement ... sadness, values 0..1); our
models know RAVDESS's eight (neutral, calm, happy, sad, angry, fearful, disgusted, surprised). The
tables map by meaning; where A2F has no counterpart for a label, or we none for an A2F name, the
emotion is dropped on the way (docs/serving-grpc.md#emotions lists them):

    A2F          ours          A2F <- ours
    amazement    surprised     surprised -> amazement
    anger        angry         angry     -> anger
    cheekiness   happy (near)  happy     -> joy
    disgust      disgusted     disgusted -> disgust
    fear         fearful       fearful   -> fear
    grief        sad (near)    sad       -> sadness
    joy          happy
    outofbreath  -             neutral, calm: -  (A2F's neutral face is every emotion at 0)
    pain         -
    sadness      sad
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..training.control_values import emotion_index, parse_emotion
from ..training.errors import UserError

A2F_EMOTIONS = ("amazement", "anger", "cheekiness", "disgust", "fear", "grief", "joy", "outofbreath", "pain", "sadness")
FROM_A2F = {"amazement": "surprised", "anger": "angry", "cheekiness": "happy", "disgust": "disgusted",
            "fear": "fearful", "grief": "sad", "joy": "happy", "sadness": "sad"}
TO_A2F = {"surprised": "amazement", "angry": "anger", "happy": "joy", "disgusted": "disgust",
          "fearful": "fear", "sad": "sadness"}


def check_emotions(emotions: Mapping[str, float]) -> None:
    """Refuse what A2F-3D refuses: a name not among its ten, a value outside 0..1 (`UserError`)."""
    for name, value in emotions.items():
        if name not in A2F_EMOTIONS:
            raise UserError(f"unknown emotion {name!r}: A2F-3D's are {', '.join(A2F_EMOTIONS)}")
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise UserError(f"emotion {name} = {value!r}: values go from 0 to 1")


class EmotionMap:
    """The tables for one model: only labels it has (and, for overrides, has a prototype for)."""

    def __init__(self, labels: Sequence[str], prototypes: Sequence[str]):
        self.labels = tuple(labels)
        self._from_a2f: dict[str, str] = {}
        for a2f, ours in FROM_A2F.items():
            index = emotion_index(ours, prototypes)
            if index is not None:
                self._from_a2f[a2f] = prototypes[index]
        self._to_a2f: dict[str, str] = {}
        for ours, a2f in TO_A2F.items():
            index = emotion_index(ours, self.labels)
            if index is not None:
                self._to_a2f[self.labels[index]] = a2f

    def override(self, emotions: Mapping[str, float]) -> str | None:
        """The strongest mappable input emotion as our control (`happy:0.700`); None when none is
        above 0 (A2F's neutral face), so the session's own emotion setting applies."""
        check_emotions(emotions)
        best: tuple[float, str] | None = None
        for name in A2F_EMOTIONS:  # A2F's order breaks ties, whatever order the client's map has
            value = emotions.get(name, 0.0)
            if value > 0.0 and name in self._from_a2f and (best is None or value > best[0]):
                best = (value, self._from_a2f[name])
        return None if best is None else f"{best[1]}:{best[0]:.3f}"

    def to_a2f(self, by_label: Mapping[str, float]) -> dict[str, float]:
        """Our labels' values under A2F's names (two labels on one name add up); the rest dropped."""
        out: dict[str, float] = {}
        for label, value in by_label.items():
            name = self._to_a2f.get(label)
            if name is not None:
                out[name] = out.get(name, 0.0) + float(value)
        return out

    def in_effect(self, setting: str, probabilities: Mapping[str, float] | None) -> dict[str, float]:
        """What a session's emotion setting (`Engine.emotion_setting`) shows, under A2F's names:
        the voice's emotion for `auto`, else the chosen label at its strength."""
        label, strength = parse_emotion(setting, self.labels)
        if label is None:
            return self.to_a2f(probabilities or {})
        return self.to_a2f({self.labels[label]: strength})
