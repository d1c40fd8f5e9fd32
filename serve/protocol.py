"""The WebSocket protocol of `emotalk-serve`, without any I/O (docs/serving.md has the whole of it).

    client: {"type": "hello", "sample_rate": 48000, "format": "s16le", "channels": 1, "frames": "json",
             "controls": {"emotion": "happy:0.7"}}                         first, as text
    server: {"type": "ready", "session": ID, "fps": 30, "hop_ms": 20, "lookahead_ms": 40,
             "names": [52 ARKit names], "emotions": [labels], "controls": {the controls in effect}}
    client: binary PCM blocks of any size (whole samples), {"type": "controls", ...}, {"type": "end"}
    server: {"type": "frame", "frame": 12, "time": 0.4, ...} per frame (or `BINARY_FRAME`), the final
            frame, close 1000; {"type": "error", "reason": ...} for a refused control change

Parsing, decoding and encoding live here so that the server, the tests and the load tester share
them, and so that each rule can be tested without a socket. A message the protocol cannot take
raises `ProtocolError` with the close code and a reason that names the problem and the fix.
"""
from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..engine import Controls, Engine
from ..streamer.controls import MAX_JSON_BYTES, ControlBoard
from ..streamer.face import FaceSettings
from ..streamer.frames import OutFrame, frame_json
from ..streamer.resample import StreamingResampler
from ..streamer.sources import PCM_FORMATS
from ..training.audio import MAX_RESAMPLE_KERNEL
from ..training.blendshapes import COUNT, NAMES
from ..training.errors import UserError

PATH = "/v1/stream"
MAX_MESSAGE_BYTES = 1 << 20  # any message; larger ones close the connection (1009)
MIN_RATE, MAX_RATE = 8000, 96000
MAX_CHANNELS = 2
FRAME_KINDS = ("json", "binary")
HELLO_FIELDS = ("type", "sample_rate", "format", "channels", "frames", "controls")
# The binary frame: index uint32, time float64 (s), flags uint8 (bit 0: final), emotion int8 (index
# into "emotions" of the ready message, -1: none), then the 52 weights as float32, little-endian.
BINARY_FRAME = struct.Struct(f"<IdBb{COUNT}f")
FINAL_FLAG = 1

# Close codes (RFC 6455 section 7.4.1; 1013 from the IANA registry).
NORMAL, GOING_AWAY, UNSUPPORTED, POLICY, TOO_BIG, INTERNAL, TRY_LATER = 1000, 1001, 1003, 1008, 1009, 1011, 1013
MAX_REASON_BYTES = 123  # what a close frame can carry


class ProtocolError(Exception):
    """A message the protocol refuses: the connection closes with `code` and `reason`."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Hello:
    """The client's first message, checked."""

    sample_rate: int
    format: str
    channels: int
    binary_frames: bool
    controls: dict[str, object]  # control changes (streamer/controls.py names), checked against the model later


@dataclass(frozen=True)
class DecodedFrame:
    """A frame as a client reads it, from either form; `weights` in EmoTalk order (`names`)."""

    index: int
    time: float
    final: bool
    emotion: str | None
    weights: np.ndarray


def close_reason(text: str) -> str:
    """`text` cut to what a close frame can carry (123 bytes of UTF-8)."""
    data = text.encode()
    if len(data) <= MAX_REASON_BYTES:
        return text
    return data[:MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


def _json_object(message: str | bytes, what: str) -> dict:
    if isinstance(message, bytes):
        raise ProtocolError(UNSUPPORTED, f"binary message where {what} was expected: send it as JSON text")
    if len(message) > MAX_JSON_BYTES:
        raise ProtocolError(TOO_BIG, f"{what} of {len(message)} characters; the limit is {MAX_JSON_BYTES}")
    try:
        value = json.loads(message)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise ProtocolError(POLICY, f"{what} is not a JSON object: see docs/serving.md")
    return value


def parse_hello(message: str | bytes) -> Hello:
    """The first message: `{"type":"hello","sample_rate":N,...}`."""
    if isinstance(message, bytes):
        raise ProtocolError(POLICY, 'audio before the hello: send {"type":"hello","sample_rate":16000} as text first')
    hello = _json_object(message, "the hello")
    if hello.get("type") != "hello":
        raise ProtocolError(POLICY, 'the first message must be {"type":"hello","sample_rate":16000,...}')
    unknown = sorted(set(hello) - set(HELLO_FIELDS))
    if unknown:
        raise ProtocolError(POLICY, f"unknown hello field {unknown[0]!r}: use {', '.join(HELLO_FIELDS[1:])}")
    rate = hello.get("sample_rate")
    if not _is_int(rate) or not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(UNSUPPORTED, f"sample_rate {rate!r}: give the audio's rate in Hz, {MIN_RATE} to {MAX_RATE}")
    common = math.gcd(rate, 16000)
    if (rate // common) * (16000 // common) > MAX_RESAMPLE_KERNEL:
        raise ProtocolError(UNSUPPORTED, f"sample_rate {rate} is not a standard rate: use e.g. 16000, 44100 or 48000")
    fmt = hello.get("format", "s16le")
    if fmt not in PCM_FORMATS:
        raise ProtocolError(UNSUPPORTED, f"format {fmt!r}: use s16le or f32le (little-endian PCM)")
    channels = hello.get("channels", 1)
    if not _is_int(channels) or not 1 <= channels <= MAX_CHANNELS:
        raise ProtocolError(UNSUPPORTED, f"channels {channels!r}: send 1 or 2 interleaved channels")
    frames = hello.get("frames", "json")
    if frames not in FRAME_KINDS:
        raise ProtocolError(POLICY, f"frames {frames!r}: ask for json or binary")
    controls = hello.get("controls", {})
    if not isinstance(controls, dict):
        raise ProtocolError(POLICY, f'controls must be an object such as {{"emotion": "happy:0.7"}}, not {controls!r}')
    return Hello(rate, fmt, channels, frames == "binary", controls)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_message(message: str) -> dict[str, object] | None:
    """A text message after the hello: the control changes of `{"type":"controls",...}`, or None
    for `{"type":"end"}`."""
    body = _json_object(message, "a control message")
    kind = body.pop("type", None)
    if kind == "end":
        return None
    if kind != "controls":
        raise ProtocolError(POLICY, f'message type {kind!r}: send binary PCM, {{"type":"controls",...}} or {{"type":"end"}}')
    return body


def apply_controls(engine: Engine, controls: Controls, face: FaceSettings, changes: Mapping[str, object],
                   origin: str) -> tuple[Controls, FaceSettings]:
    """`controls` and `face` with `changes` (streamer/controls.py names and checks) applied, or a
    `UserError` naming the refused value."""
    if not changes:
        return controls, face
    board = ControlBoard(engine, controls, face)
    reason = board.submit(changes, origin)
    if reason is not None:
        raise UserError(reason)
    controls, face, _ = board.current
    return controls, face


class PcmDecoder:
    """Binary PCM blocks in the hello's format -> 16 kHz mono float32."""

    def __init__(self, hello: Hello):
        dtype, self._scale = PCM_FORMATS[hello.format]
        self._dtype = np.dtype(dtype)
        self._channels = hello.channels
        self._frame_bytes = self._dtype.itemsize * hello.channels
        self._resampler = StreamingResampler(hello.sample_rate, 16000)
        self._what = f"{hello.format} {'stereo' if hello.channels == 2 else 'mono'}"

    def decode(self, block: bytes) -> np.ndarray:
        if len(block) % self._frame_bytes:
            raise ProtocolError(UNSUPPORTED, f"PCM block of {len(block)} bytes is not whole {self._what} samples "
                                             f"({self._frame_bytes} bytes each)")
        audio = np.frombuffer(block, dtype=self._dtype).astype(np.float32)
        audio *= np.float32(self._scale)
        if self._dtype.kind == "f":  # integer PCM is finite and within full scale already
            np.nan_to_num(audio, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            np.clip(audio, -1.0, 1.0, out=audio)
        if self._channels > 1:
            audio = audio.reshape(-1, self._channels).mean(axis=1)
        if self._resampler.passthrough:
            return audio
        return np.clip(self._resampler.process(audio), -1.0, 1.0)

    def flush(self) -> np.ndarray:
        """The resampler's last samples, at the end of input."""
        return np.clip(self._resampler.flush(), -1.0, 1.0)


def ready_message(session_id: str, engine: Engine, fps: int, controls: Mapping[str, object]) -> str:
    """`controls`: the session's controls in effect (streamer/controls.py `control_state`), so that a
    client that left some to the server shows what it got."""
    return json.dumps({"type": "ready", "session": session_id, "fps": fps, "hop_ms": engine.hop_ms,
                       "lookahead_ms": engine.lookahead_ms, "names": list(NAMES),
                       "emotions": list(engine.cfg.emotion_labels), "controls": controls}, separators=(",", ":"))


def error_message(reason: str) -> str:
    return json.dumps({"type": "error", "reason": reason}, separators=(",", ":"))


def frame_text(frame: OutFrame) -> str:
    """The streamer's WebSocket frame (streamer/frames.py `frame_json`) with `"type": "frame"`."""
    return frame_json(frame, "frame")


def frame_bytes(frame: OutFrame, emotions: tuple[str, ...]) -> bytes:
    emotion = -1 if frame.emotion is None else emotions.index(frame.emotion)
    return BINARY_FRAME.pack(frame.index, frame.time, FINAL_FLAG if frame.final else 0, emotion, *frame.weights)


def decode_frame(message: str | bytes, emotions: tuple[str, ...] | list[str]) -> DecodedFrame:
    """A frame message of either form (`emotions`: the ready message's list); `ValueError` for
    anything else, such as an error message."""
    if isinstance(message, bytes):
        if len(message) != BINARY_FRAME.size:
            raise ValueError(f"binary frame of {len(message)} bytes; a frame is {BINARY_FRAME.size}")
        index, seconds, flags, emotion, *weights = BINARY_FRAME.unpack(message)
        return DecodedFrame(index, seconds, bool(flags & FINAL_FLAG), None if emotion < 0 else emotions[emotion],
                            np.array(weights, dtype=np.float32))
    body = json.loads(message)
    if body.get("type") != "frame":
        raise ValueError(f"not a frame: {message[:200]}")
    return DecodedFrame(body["frame"], body["time"], body["final"], body["emotion"],
                        np.array([body["weights"][name] for name in NAMES], dtype=np.float32))
