"""Live controls: the same changes from OSC (`/emotalk/...`) and WebSocket JSON, checked, then
applied by the streaming loop between two engine steps.

    OSC                              JSON
    /emotalk/emotion "happy:0.7"     {"emotion": "happy:0.7"}      auto or LABEL[:STRENGTH]
    /emotalk/level "high" | 0.4      {"level": "high"} | 0.4       low, high, 0..1 or voice (arousal)
    /emotalk/person 3                {"person": 3}                 0..n_persons-1
    /emotalk/gain "mouth" 1.3        {"gain": {"mouth": 1.3}}      region factor 0..4
    /emotalk/smoothing 0.05          {"smoothing": 0.05}           seconds, 0..1
    /emotalk/blink 0 | 1             {"blink": false}              procedural blinks on/off
    /emotalk/head_motion 0.5         {"head_motion": 0.5}          speech-driven head motion, 0 (off)..2
    /emotalk/eye_motion 0            {"eye_motion": 0}             gaze holds and saccades, 0 (off)..2

An invalid change is refused with a reason (logged, and returned to the caller); it never stops
the stream and never half-applies.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Mapping, Sequence

from ..engine import Controls, Engine
from ..training.blendshapes import REGIONS
from ..training.control_values import parse_person
from ..training.errors import UserError
from .face import FaceSettings, check_motion, check_smoothing

log = logging.getLogger(__name__)

OSC_PREFIX = "/emotalk/"
NAMES = ("emotion", "level", "person", "gain", "smoothing", "blink", "head_motion", "eye_motion")
MAX_JSON_BYTES = 4096


def control_state(engine: Engine, controls: Controls, face: FaceSettings) -> dict[str, object]:
    """The controls in effect as the JSON control messages write them, for a viewer or a page: the
    emotion setting (the model's default where none was given), the level (a number, or "voice"), every
    region's gain; and the choices: the emotion labels and the number of persons."""
    return {"emotion": engine.emotion_setting(controls), "level": engine.level_setting(controls),
            "person": parse_person(controls.person, engine.cfg.n_persons),
            "gain": {region: float(controls.gains.get(region, 1.0)) for region in REGIONS},
            "smoothing": face.smoothing, "blink": face.blink,
            "head_motion": face.head_motion, "eye_motion": face.eye_motion,
            "labels": list(engine.prototype_labels), "persons": engine.cfg.n_persons}


class ControlBoard:
    """The current controls, changed from any thread, read by the streaming loop."""

    def __init__(self, engine: Engine, controls: Controls, face: FaceSettings):
        self._engine = engine
        engine.resolve_controls(controls)  # a bad command-line value fails before streaming starts
        self._controls = controls
        self._face = face
        self._lock = threading.Lock()
        self._version = 0
        self.accepted = 0
        self.refused = 0

    @property
    def current(self) -> tuple[Controls, FaceSettings, int]:
        """(engine controls, face settings, version): the version grows with every change."""
        with self._lock:
            return self._controls, self._face, self._version

    def state(self) -> dict[str, object]:
        """The controls in effect, for the viewer (`control_state`)."""
        controls, face, _ = self.current
        return control_state(self._engine, controls, face)

    def submit(self, changes: Mapping[str, object], origin: str) -> str | None:
        """Apply `changes` ({name: value}) together, or none of them; returns the refusal reason."""
        try:
            with self._lock:
                controls, face = self._changed(self._controls, self._face, changes)
                self._engine.resolve_controls(controls)
                self._controls, self._face = controls, face
                self._version += 1
                self.accepted += 1
        except UserError as exc:
            self.refused += 1
            log.warning("control from %s refused: %s", origin, exc)
            return str(exc)
        log.info("control from %s: %s", origin, ", ".join(f"{k}={v}" for k, v in changes.items()))
        return None

    def submit_osc(self, address: str, args: Sequence[object], origin: str) -> str | None:
        """One OSC control message, e.g. `/emotalk/gain "mouth" 1.3`."""
        name = address[len(OSC_PREFIX):] if address.startswith(OSC_PREFIX) else ""
        if name not in NAMES:
            return self.refuse(origin, f"unknown control address {address!r}: use {OSC_PREFIX}"
                                        f"{{{','.join(NAMES)}}}")
        expected = 2 if name == "gain" else 1
        if len(args) != expected:
            return self.refuse(origin, f"{address} takes {expected} argument(s), got {len(args)}")
        if name == "gain" and not isinstance(args[0], str):
            return self.refuse(origin, f"{address} takes a region name, then a factor")
        value = {args[0]: args[1]} if name == "gain" else args[0]
        if name == "blink" and isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
            value = bool(value)  # OSC senders without a boolean type send 0/1
        return self.submit({name: value}, origin)

    def submit_json(self, text: str | bytes, origin: str) -> str | None:
        """One JSON control message: an object of NAME: VALUE pairs."""
        if len(text) > MAX_JSON_BYTES:
            return self.refuse(origin, f"control message of {len(text)} bytes; the limit is {MAX_JSON_BYTES}")
        try:
            message = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested ~1000 deep
            return self.refuse(origin, f"control message is not JSON ({exc})")
        if not isinstance(message, dict) or not message:
            return self.refuse(origin, 'a control message is a JSON object such as {"emotion": "happy:0.7"}')
        return self.submit(message, origin)

    def refuse(self, origin: str, reason: str) -> str:
        """Count and log a message refused before it became a change (unparsable, wrong shape)."""
        self.refused += 1
        log.warning("control from %s refused: %s", origin, reason)
        return reason

    def _changed(self, controls: Controls, face: FaceSettings,
                 changes: Mapping[str, object]) -> tuple[Controls, FaceSettings]:
        engine_changes: dict[str, object] = {}
        face_changes: dict[str, object] = {}
        for name, value in changes.items():
            if name == "emotion":
                engine_changes[name] = _typed(name, value, str)
            elif name == "level":
                engine_changes[name] = _typed(name, value, (str, int, float))
            elif name == "person":
                engine_changes[name] = _typed(name, value, int)
            elif name == "gain":
                engine_changes["gains"] = {**controls.gains, **_gains(value)}
            elif name == "smoothing":
                face_changes[name] = check_smoothing(_number(name, value), shown=value)
            elif name == "blink":
                face_changes[name] = _typed(name, value, bool)
            elif name in ("head_motion", "eye_motion"):
                face_changes[name] = check_motion(_number(name, value), name, shown=value)
            else:
                raise UserError(f"unknown control {name!r}: use {', '.join(NAMES)}")
        return dataclasses.replace(controls, **engine_changes), dataclasses.replace(face, **face_changes)


def _typed(name: str, value: object, kinds: type | tuple[type, ...]) -> object:
    """`value` if it is of `kinds` (a bool is not a number here), else a clear refusal."""
    if isinstance(value, kinds) and (kinds is bool or not isinstance(value, bool)):
        return value
    raise UserError(f"{name} {value!r} has the wrong type ({type(value).__name__})")


def _number(name: str, value: object) -> float:
    """`value` as a float, or a clear refusal (also for a JSON integer too large for one)."""
    try:
        return float(_typed(name, value, (int, float)))
    except OverflowError:
        raise UserError(f"{name} {value!r} is far out of range") from None


def _gains(value: object) -> dict[str, float]:
    if not isinstance(value, dict) or not value:
        raise UserError(f'gain {value!r} is not a region->factor map, e.g. {{"mouth": 1.3}}')
    return {str(region): _typed("gain", factor, (int, float)) for region, factor in value.items()}
