"""Many sessions on one engine: every hop, one batched `engine.step` runs all ready sessions.

    hub = SessionHub(Engine.load("default"), max_streams=48)
    await hub.start()
    session = hub.open(Controls(emotion="happy:0.5"))      # SessionRefused when full
    session.feed(samples)                                   # 16 kHz mono float32, any amount
    session.finish()                                        # end of input
    async for frame in session.frames():                    # OutFrame, ends with the final one
        ...
    await hub.stop()

Everything runs on one asyncio loop, and every method is called from it. The batching loop
wakes when a session has something to decode (a hop of audio, a tail to flush), runs one step over
all ready sessions (waiting up to `BATCH_WAIT_S` for the others' hops) in a worker thread (ONNX Runtime releases the GIL, so the loop keeps serving
sockets meanwhile) and queues each session's new frames. Streams are created, fed, re-controlled and
closed only between two steps: a `Stream` and the engine's state pools are not thread-safe.

Frames are the streamer's (streamer/pipeline.py): the frame clock, face post-processing (smoothing,
blinks), speech-driven head and eye motion, the voice's emotion label, and a final neutral frame one
past the last frame of the audio.
A session whose consumer stops reading is held back (its queue full, it sits out the steps) and
dropped after `STALL_S`; a session the engine fails on ends alone. Neither slows the others.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from ..engine import Controls, Engine, Stream
from ..streamer.clock import FrameClock
from ..streamer.face import FacePost, FaceSettings, check_smoothing
from ..streamer.frames import OutFrame, neutral_frame
from ..streamer.head_motion import MotionModel
from ..training.errors import UserError

if TYPE_CHECKING:
    from .workers import WorkerBoard

log = logging.getLogger(__name__)

STALL_S = 5.0  # a session whose frame queue stays full this long has a consumer that stopped reading
TICK_S = 0.25  # how often an idle loop looks for stalled sessions
# Longest a ready hop waits for the other sessions' hops to join its step. Clients' hops arrive
# spread over the hop, and a step costs about 1 ms beside its cost per session, and more when its
# sessions' state rows are not consecutive: back to back, steps of a few sessions each spent most of
# a core on that (docs/loadtest.md). A whole hop (20 ms) lets nearly every session join each step:
# at 48 sessions p95 186 and 428 ms against 781 and 680 with 15 ms, in turns. A step never waits
# when every session is ready (one speaker gets no delay) or when a session is behind by more than
# a hop (it catches up a hop per step).
BATCH_WAIT_S = 0.020
PUBLISH_S = 0.1  # how often a worker's counters reach the board (serve/workers.py) while it is busy
STOP_TIMEOUT_S = 5.0  # how long `stop` waits for every session's final frame
MAX_BACKLOG_S = 60.0  # audio a session may have waiting for the engine, in seconds


class SessionRefused(Exception):
    """A new session cannot be served now; `reason` says why and what to do."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Session:
    """One speaker: audio in, frames out. Made by `SessionHub.open`."""

    def __init__(self, hub: "SessionHub", session_id: str, controls: Controls, face: FaceSettings, seed: int,
                 motion: bool = True):
        self.id = session_id
        self.fps = hub.fps
        self.error: str | None = None
        self._hub = hub
        self._controls = controls
        self._new_controls: Controls | None = None  # applied to the stream between two steps
        self._post = FacePost(hub.fps, face, seed)
        self._motion = MotionModel(hub.fps, seed) if motion else None
        self._clock = FrameClock(hub.engine.cfg.fps, hub.fps, hub.engine.sample_rate)
        self._stream: Stream | None = None  # created between two steps
        self._inbox: list[np.ndarray] = []
        self._fed = 0  # samples
        self._finish_requested = False
        self._finish_applied = False
        self._ended = False  # the final frame is queued
        self._closed = False
        self._queue: deque[OutFrame] = deque()
        self._arrived = asyncio.Event()
        self._full_since: float | None = None
        self._probabilities: np.ndarray | None = None

    @property
    def controls(self) -> Controls:
        return self._controls

    @property
    def face(self) -> FaceSettings:
        return self._post.settings

    def feed(self, samples: np.ndarray) -> None:
        """Queue mono float32 audio at 16 kHz (callers decode and resample); raises `UserError` after
        `finish` or when more than `MAX_BACKLOG_S` of audio waits for the engine."""
        if self._closed:
            return
        if self._finish_requested:
            raise UserError("audio after the end of input: open a new session for new audio")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        backlog = (self._fed + len(samples)) / self._hub.engine.sample_rate - self._clock.next_index / self.fps
        if backlog > MAX_BACKLOG_S:
            raise UserError(f"more than {MAX_BACKLOG_S:.0f} s of audio waiting for the engine: "
                            f"send audio no faster than the frames come back")
        self._inbox.append(samples)
        self._fed += len(samples)
        self._hub._wake.set()

    def finish(self) -> None:
        """End of input: the tail is decoded, then the final neutral frame ends `frames()`."""
        if not (self._closed or self._finish_requested):
            self._finish_requested = True
            self._hub._wake.set()

    def set_controls(self, controls: Controls | None = None, face: FaceSettings | None = None) -> None:
        """Change the controls from the next step on; a bad value raises `UserError` and keeps the old ones."""
        self._hub._check(controls, face)
        if controls is not None:
            self._controls = self._new_controls = controls
        if face is not None:
            self._post.settings = face

    async def frames(self) -> AsyncIterator[OutFrame]:
        """The frames as they are decoded, in order; ends after the final frame, or at once when the
        session is closed or dropped (`error`)."""
        while not self._closed:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            frame = self._queue.popleft()
            if self._full_since is not None:
                self._hub._wake.set()  # room again: the session may take part in the next step
            yield frame
            if frame.final:
                return

    def emotion_probabilities(self) -> dict[str, float] | None:
        """The voice's recent emotion, by label; None before the first step."""
        if self._probabilities is None:
            return None
        return dict(zip(self._hub.engine.cfg.emotion_labels, map(float, self._probabilities)))

    def close(self, reason: str = "") -> None:
        """Drop the session at once (its client is gone): no more frames, the engine slot is freed."""
        if self._closed:
            return
        self._closed = True
        self._arrived.set()
        self._hub._wake.set()
        if reason:
            log.info("session %s closed: %s", self.id, reason)

    # -- used by the hub's loop, between two steps --

    def _prepare(self) -> None:
        engine = self._hub.engine
        if self._stream is None:
            self._stream = engine.create_stream(self._controls)
            self._new_controls = None
        if self._new_controls is not None:
            self._stream.controls = self._new_controls
            self._new_controls = None
        if self._inbox:
            self._stream.accept_waveform(engine.sample_rate, np.concatenate(self._inbox))
            self._inbox.clear()
        if self._finish_requested and not self._finish_applied:
            self._stream.input_finished()
            self._finish_applied = True

    def _ready(self) -> bool:
        """Whether the next step should decode this session: it has work and room for frames."""
        return (not (self._closed or self._ended) and self._stream is not None
                and len(self._queue) < self._hub.frame_queue and self._hub.engine.is_ready(self._stream))

    def _behind(self) -> bool:
        """More than one hop of audio waits: the session should not wait for others' hops."""
        return self._stream.pending_samples >= 2 * self._hub.engine.hop_samples

    def _collect(self) -> None:
        """Queue the frames the last step finished, as the streamer emits them (pipeline._emit)."""
        stream = self._stream
        for frame in stream.frames():
            self._clock.push(frame)
        finished = self._finish_applied and stream.done
        ready = self._clock.ready(stream.samples_received, finished)
        self._probabilities = stream.emotion_probabilities()
        labels = self._hub.engine.cfg.emotion_labels
        emotion = None if self._probabilities is None else labels[int(np.argmax(self._probabilities))]
        for index, seconds, weights in ready:
            shown, face = self._post(seconds, weights), self._post.settings
            motion = None if self._motion is None else self._motion(seconds, shown, face.head_motion, face.eye_motion)
            self._queue.append(OutFrame(index, seconds, self.fps, shown, emotion=emotion, motion=motion))
        if finished:
            rest = None if self._motion is None else self._motion.rest()
            self._queue.append(neutral_frame(self._clock.next_index, self.fps, rest))
            self._ended = True
        if ready or finished:
            self._hub.frames += len(ready) + finished
            self._arrived.set()

    def _release(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class SessionHub:
    """Sessions on one shared engine, decoded together by one batching loop."""

    def __init__(self, engine: Engine, *, max_streams: int = 64, frame_queue: int = 256, seed: int = 0,
                 board: "WorkerBoard | None" = None) -> None:
        """`board`: the shared counters of a server's worker processes (serve/workers.py): the
        sessions of all of them count against `max_streams`, and `stats()` answers for all."""
        if max_streams < 1 or frame_queue < 1:
            raise UserError(f"max_streams {max_streams} and frame_queue {frame_queue} must be 1 or more")
        self.engine = engine
        self.max_streams = max_streams
        self._board = board
        self._published = 0.0  # when this hub last put its counters on the board
        self.frame_queue = frame_queue
        self.fps = engine.cfg.fps
        self._seed = seed
        self._live: dict[str, Session] = {}  # sessions holding (or about to hold) an engine stream
        self._opened = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emotalk-serve step")
        self._stopping = False
        self._started = time.monotonic()
        self.steps = 0
        self.frames = 0
        self.refused = 0
        self.dropped = 0

    @property
    def sessions(self) -> int:
        """Sessions open now (until their final frame is queued, or they are closed)."""
        return sum(not s._closed for s in self._live.values())

    async def start(self) -> None:
        """Start the batching loop on the running event loop. The default controls' rest face is
        found first: found by the first session instead, it held the loop (and every session
        opening with it) for about half a second, a backlog a loaded server took seconds to work off."""
        self._check(Controls(), None)
        self._started = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="emotalk-serve batching loop")

    async def stop(self) -> None:
        """Finish every session (each gets its remaining frames and the final one), then stop the loop;
        sessions that cannot finish within `STOP_TIMEOUT_S` (a consumer that does not read) are dropped."""
        self._stopping = True
        for session in list(self._live.values()):
            session.finish()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S)
            except TimeoutError:
                for session in list(self._live.values()):
                    self._drop(session, "server shutting down: the session did not finish in time")
                await self._task
        for session in list(self._live.values()):  # never started: nothing was decoded
            session.close("server shutting down")
            self._remove(session)
        self._executor.shutdown(wait=False)

    def open(self, controls: Controls | None = None, face: FaceSettings | None = None, *, motion: bool = True) -> Session:
        """A new session; raises `SessionRefused` when the hub is full or stopping, `UserError` on bad controls.

        `motion`: compute head and eye motion for its frames (JSON frames send it; binary frames and
        the A2F-3D API have no place for it, and it costs about 30 us a frame)."""
        if self._stopping:
            raise SessionRefused("server shutting down: try again later")
        controls, face = controls or Controls(), face or FaceSettings()
        self._check(controls, face)
        held = self.sessions if self._board is None else self._board.take_seat(self.max_streams)
        if held >= self.max_streams:
            self.refused += 1
            self._publish(now=True)
            raise SessionRefused(f"server full ({held} of {self.max_streams} sessions): try again later")
        session = Session(self, secrets.token_hex(8), controls, face, self._seed + self._opened, motion)
        self._opened += 1
        self._live[session.id] = session
        self._wake.set()
        return session

    def stats(self) -> dict:
        """Counters for /stats and the load tester: this hub's, or with a board every worker's added up."""
        if self._board is not None:
            return self._board.summary(self._own_stats())
        return self._own_stats()

    def _own_stats(self) -> dict:
        return {"sessions": self.sessions, "max_streams": self.max_streams, "steps": self.steps,
                "frames": self.frames, "cpu_seconds": round(time.process_time(), 3),
                "uptime_s": round(time.monotonic() - self._started, 3), "refused": self.refused,
                "dropped": self.dropped}

    def _check(self, controls: Controls | None, face: FaceSettings | None) -> None:
        """Refuse controls this model cannot take and face settings out of range (`UserError`)."""
        if controls is not None:
            self.engine.resolve_controls(controls)
        if face is not None:
            check_smoothing(face.smoothing)

    def _remove(self, session: Session) -> None:
        """The session is done with: its engine slot and its seat are free."""
        session._release()
        del self._live[session.id]
        if self._board is not None:
            self._board.free_seat()

    def _drop(self, session: Session, reason: str) -> None:
        """End a session for the hub's own reason (stalled consumer, engine failure, shutdown)."""
        if not session._closed:
            self.dropped += 1
            session.error = reason
            log.warning("session %s dropped: %s", session.id, reason)
            session.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        first_ready = None  # when the oldest hop waiting for a step became ready
        while True:
            self._sweep()
            if self._stopping and not self._live:
                return
            ready = [s for s in self._live.values() if s._ready()]
            self._wake.clear()
            if not ready:
                first_ready = None
                self._publish()
                await self._wait_for_wake(TICK_S)
                continue
            first_ready = first_ready or time.monotonic()
            waited = time.monotonic() - first_ready
            if waited < BATCH_WAIT_S and len(ready) < len(self._live) and not any(s._behind() for s in ready):
                await self._wait_for_wake(BATCH_WAIT_S - waited)  # let the others' hops join this step
                continue
            first_ready = None
            try:
                await loop.run_in_executor(self._executor, self.engine.step, [s._stream for s in ready])
            except Exception as exc:  # noqa: BLE001 - the engine isolates backend failures; anything else ends this batch
                for session in ready:
                    self._drop(session, f"the engine failed: {type(exc).__name__}: {exc}")
                continue
            self.steps += 1
            for session in ready:
                if not session._closed:
                    session._collect()
            self._publish()

    async def _wait_for_wake(self, seconds: float) -> None:
        """Until a session has news, or `seconds` pass (a timeout scope, not `wait_for`'s new task
        each time: this runs on every audio block of every session)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    def _publish(self, now: bool = False) -> None:
        """Put this worker's counters on the board: at most every `PUBLISH_S`, or `now`."""
        at = time.monotonic()
        if self._board is not None and (now or at - self._published >= PUBLISH_S):
            self._published = at
            self._board.publish(self._own_stats())

    def _sweep(self) -> None:
        """Between two steps: create, feed and re-control streams; free the slots of ended and
        closed sessions; drop failed and stalled ones."""
        now = time.monotonic()
        for session in list(self._live.values()):
            if not session._closed:
                session._prepare()
                stream = session._stream
                if stream.error is not None:
                    self._drop(session, f"the engine failed on this session: {stream.error}")
                elif session._finish_applied and stream.done and not session._ended:
                    session._collect()  # nothing left to decode (e.g. no audio at all)
            if session._closed or session._ended:
                self._remove(session)
            elif len(session._queue) >= self.frame_queue:
                session._full_since = session._full_since or now
                if now - session._full_since > STALL_S:
                    self._drop(session, f"stopped reading frames ({len(session._queue)} waiting for "
                                        f"{STALL_S:g} s)")
            else:
                session._full_since = None
