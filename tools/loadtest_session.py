"""One load-test client: real speech paced in real time in 20 ms blocks, every frame timed.

What a client records is what the latency figure means, so it lives here in one place:

- block k of a session leaves at `start + k * 20 ms` on the monotonic clock (never "20 ms after the
  previous one", which drifts); `sent[k]` is when it actually left and `lag[k]` how late that was;
- each frame is stamped on arrival; a frame whose `time` is t shows the audio at t seconds of the
  session, whose sample floor(t * 16000) travelled in block floor(t * 16000) // 320, so its
  sound-to-frame latency is arrival - sent[that block] (`SessionResult.latencies`).

The session's outcome is `completed` (close 1000 after the final frame), `refused` (the server was
full: close 1013 or HTTP 503) or `failed` (anything else, with the reason). A failure that means the
setup is wrong rather than the server busy (no server there, wrong token or path) also sets `fatal`,
one line naming the problem and its fix, which the command reports instead of a table.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from ..serve.protocol import NORMAL, PATH, TRY_LATER, decode_frame
from ..training.audio import SAMPLE_RATE, read_audio
from ..training.framing import frame_count

BLOCK_S = 0.02
BLOCK_SAMPLES = SAMPLE_RATE * 20 // 1000
OPEN_TIMEOUT_S = 10.0  # connect, upgrade and the server's ready
SILENCE_S = 10.0  # after the end of input, a server that sends nothing this long is given up on
END_MESSAGE = json.dumps({"type": "end"})


class Speech:
    """The speech every client sends, looped: 16-bit little-endian mono PCM at 16 kHz."""

    def __init__(self, audio: np.ndarray, names: list[str]):
        if len(audio) < BLOCK_SAMPLES:  # so that one block never wraps more than once
            audio = np.tile(audio, math.ceil(BLOCK_SAMPLES / len(audio)))
        self.pcm = (np.clip(audio, -1.0, 1.0) * 32767).round().astype("<i2").tobytes()
        self.samples = len(audio)
        self.names = names

    @classmethod
    def load(cls, paths: list[Path]) -> "Speech":
        """The files one after the other (any rate and channels; resampled to 16 kHz mono)."""
        return cls(np.concatenate([read_audio(path) for path in paths]), [str(path) for path in paths])

    def block(self, first: int) -> bytes:
        """BLOCK_SAMPLES samples from sample `first` of the loop (any integer), wrapping round."""
        start = 2 * (first % self.samples)
        end = start + 2 * BLOCK_SAMPLES
        if end <= len(self.pcm):
            return self.pcm[start:end]
        return self.pcm[start:] + self.pcm[:end - len(self.pcm)]


@dataclass(frozen=True)
class Plan:
    """What one client sends: `blocks` blocks from sample `offset` of the speech, its first block
    `phase_s` after its ready (clients spread over the 20 ms so their blocks do not all arrive at
    once, as real clients would not)."""

    index: int
    offset: int
    phase_s: float
    blocks: int


def plans(streams: int, seconds: float, speech_samples: int) -> list[Plan]:
    """Each client at its own place in the speech and its own phase of the block clock."""
    blocks = max(1, round(seconds / BLOCK_S))
    return [Plan(i, i * speech_samples // streams, BLOCK_S * i / streams, blocks) for i in range(streams)]


@dataclass
class SessionResult:
    index: int
    outcome: str = "failed"  # completed | refused | failed
    reason: str | None = None
    fatal: str | None = None
    ready: dict = field(default_factory=dict)  # the server's ready message
    sent: list[float] = field(default_factory=list)  # monotonic time each block left
    lag: list[float] = field(default_factory=list)  # seconds each block left after its due time
    frames: list[tuple[int, float, float]] = field(default_factory=list)  # index, audio time, arrival

    @property
    def fps(self) -> float:
        return float(self.ready.get("fps") or 0)

    @property
    def expected_frames(self) -> int:
        """The frames of the audio sent, as the server's frame clock counts them: round(seconds x
        fps), half up (streamer/clock.py)."""
        return frame_count(len(self.sent) * BLOCK_SAMPLES, SAMPLE_RATE, round(self.fps))

    def frames_shown(self) -> list[tuple[int, float, float]]:
        """Frames of the audio sent, once each, in arrival order (the neutral final frame after
        the last one and any repeat left out)."""
        seen: set[int] = set()
        kept = []
        for frame in self.frames:
            if 0 <= frame[0] < self.expected_frames and frame[0] not in seen:
                seen.add(frame[0])
                kept.append(frame)
        return kept

    def latencies(self) -> list[float]:
        """Seconds from sending the block that holds each frame's sound to that frame's arrival."""
        if not self.sent:
            return []
        last = len(self.sent) - 1
        return [arrival - self.sent[min(last, math.floor(t * SAMPLE_RATE + 1e-6) // BLOCK_SAMPLES)]
                for _, t, arrival in self.frames_shown()]

    def received_fps(self) -> float | None:
        """Frames per second of wall time from the first frame to the last one that came while
        audio was still being sent: the steady rate, without the burst of look-ahead frames the
        end of input releases at once."""
        if not self.sent:
            return None
        arrivals = sorted(arrival for _, _, arrival in self.frames_shown() if arrival <= self.sent[-1])
        if len(arrivals) < 2 or arrivals[-1] <= arrivals[0]:
            return None
        return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


async def paced_blocks(speech: Speech, plan: Plan, result: SessionResult) -> AsyncIterator[bytes]:
    """The session's speech in 20 ms blocks, each at its due time on the monotonic clock (block k at
    start + k x 20 ms: no drift), its send time and lateness recorded in `result`."""
    start = time.monotonic() + plan.phase_s
    for k in range(plan.blocks):
        due = start + k * BLOCK_S
        if (wait := due - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        now = time.monotonic()
        result.sent.append(now)
        result.lag.append(now - due)
        yield speech.block(plan.offset + k * BLOCK_SAMPLES)


async def finish(receiving: asyncio.Task, result: SessionResult) -> None:
    """Wait for the receiver after the end of input for as long as frames keep coming, so that a
    server running behind shows as late frames, not lost ones; `TimeoutError` after SILENCE_S of
    nothing."""
    while True:
        count = len(result.frames)
        done, _ = await asyncio.wait({receiving}, timeout=SILENCE_S)
        if done:
            receiving.result()  # the receiver's own failure, if any
            return
        if len(result.frames) == count:
            receiving.cancel()
            raise TimeoutError


def connect_problem(url: str, exc: Exception) -> str | None:
    """One line naming why `url` could not be reached and the fix, or None for a busy server."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        said = exc.response.body.decode("utf-8", "replace").strip() or exc.response.reason_phrase
        if status == 503:
            return None
        if status in (401, 403):
            return f"the server refused the token ({status}: {said}): pass the server's token with --token"
        if status == 404:
            return f"{url}: the server has no such endpoint (404: {said}): the path is {PATH}"
        return f"{url}: the server answered the WebSocket upgrade with HTTP {status} ({said})"
    if isinstance(exc, InvalidURI):
        return f"--url {url} is not a WebSocket URL: give ws://HOST:PORT/v1/stream"
    if isinstance(exc, InvalidHandshake):
        return f"{url} does not speak WebSocket ({exc}): check the host and port of emotalk-serve"
    if isinstance(exc, TimeoutError):
        return f"no answer from {url} within {OPEN_TIMEOUT_S:.0f} s: check the host, the port and any firewall"
    if isinstance(exc, OSError):
        return f"cannot connect to {url} ({exc.strerror or exc}): start emotalk-serve there or fix --url"
    return None


class WebSocketClient:
    """One session over the server's WebSocket protocol (docs/serving.md)."""

    def __init__(self, url: str, token: str | None, frames: str, speech: Speech):
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.hello = json.dumps({"type": "hello", "sample_rate": SAMPLE_RATE, "format": "s16le", "channels": 1,
                                 "frames": frames})
        self.speech = speech

    async def run(self, plan: Plan, result: SessionResult) -> None:
        """Fill `result` as the session goes (the command reports progress from it)."""
        try:
            ws = await connect(self.url, additional_headers=self.headers, compression=None,
                               open_timeout=OPEN_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - every way of not getting in is a result, not a crash
            result.fatal = connect_problem(self.url, exc)
            if isinstance(exc, InvalidStatus) and exc.response.status_code == 503:
                result.outcome = "refused"
            result.reason = result.fatal or f"connect: {type(exc).__name__}: {exc}"
            return
        async with ws:
            try:
                await self._session(ws, plan, result)
            except ConnectionClosed as exc:
                _closed(result, *_close_of(exc))
            except TimeoutError:
                result.reason = f"no frame and no close for {SILENCE_S:.0f} s after the end of input"
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                result.reason = f"a message the protocol does not have: {type(exc).__name__}: {exc}"

    async def _session(self, ws: ClientConnection, plan: Plan, result: SessionResult) -> None:
        await ws.send(self.hello)
        try:
            ready = json.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT_S))
        except TimeoutError:
            result.reason = f"no ready message within {OPEN_TIMEOUT_S:.0f} s of the hello"
            return
        if ready.get("type") != "ready" or not ready.get("fps"):
            result.reason = f"expected the ready message, got {str(ready)[:120]}"
            return
        result.ready = ready
        receiving = asyncio.create_task(self._receive(ws, result))
        try:
            await self._send(ws, plan, result)
            await ws.send(END_MESSAGE)
        except ConnectionClosed:
            pass  # the receiver has the close code and reason
        await finish(receiving, result)

    async def _send(self, ws: ClientConnection, plan: Plan, result: SessionResult) -> None:
        async for block in paced_blocks(self.speech, plan, result):
            await ws.send(block)

    async def _receive(self, ws: ClientConnection, result: SessionResult) -> None:
        try:
            async for message in ws:
                arrival = time.monotonic()
                if isinstance(message, bytes):
                    frame = decode_frame(message, result.ready.get("emotions", []))
                    result.frames.append((frame.index, frame.time, arrival))
                    continue
                body = json.loads(message)  # not decode_frame: the weights are not needed here
                if body.get("type") == "frame":
                    result.frames.append((int(body["frame"]), float(body["time"]), arrival))
        except ConnectionClosed as exc:
            _closed(result, *_close_of(exc))
            return
        _closed(result, ws.close_code, ws.close_reason)


def _close_of(exc: ConnectionClosed) -> tuple[int | None, str | None]:
    close = exc.rcvd
    return (close.code, close.reason) if close is not None else (None, "connection lost")


def _closed(result: SessionResult, code: int | None, reason: str | None) -> None:
    """The session's outcome from the server's close code."""
    if code == NORMAL and result.ready:
        result.outcome, result.reason = "completed", None
    elif code == TRY_LATER:
        result.outcome, result.reason = "refused", reason or "server full"
    else:
        result.outcome, result.reason = "failed", f"closed {code}: {reason or 'no reason given'}"
