"""The streaming loop: source -> engine -> frame clock -> face post-processing and head and eye
motion -> every sink.

One thread runs it. The audio callback only fills the source's ring buffer; each sink sends from
its own thread and bounded queue; control servers change the controls from theirs. Frame indices
and times come from the samples consumed, never from the wall clock.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..engine import Engine, Stream
from ..training.control_values import parse_emotion
from ..training.errors import UserError
from .clock import FrameClock
from .console import Console
from .controls import ControlBoard
from .face import FacePost
from .frames import OutFrame, neutral_frame
from .head_motion import MotionModel
from .sink import Sink
from .sources import DeviceLost, Source
from .stats import Stats, status_parts

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 0.05  # how often the loop looks at the stop flag and the status line
STATUS_EVERY_S = 1.0
# At 60 fps two output frames follow each 30 fps model frame; from a live source the second one
# waits most of a frame period so receivers see an even 60 fps rather than pairs.
PACE_FRACTION = 0.9
REOPEN_EVERY_S = 1.0  # a lost microphone: how often to try it again and repeat the neutral face


@dataclass
class Summary:
    frames: int
    audio_seconds: float
    latency_ms: tuple[float, float] | None
    drops: int
    overruns: int
    stopped: bool  # by a signal, not by the end of the input
    errors: dict[str, int]  # failed sends by receiver, those with any
    ahead_of_real_time: bool  # the input came faster than it plays: `latency_ms` measures a backlog


class Streamer:
    def __init__(self, source: Source, engine: Engine, board: ControlBoard, sinks: Sequence[Sink],
                 fps: int = 30, console: Console | None = None, seed: int = 0, exit_on_device_loss: bool = False):
        self.source, self.engine, self.board, self.sinks = source, engine, board, list(sinks)
        self.fps = fps
        self.console = console
        self.stats = Stats()
        self._clock = FrameClock(engine.cfg.fps, fps, engine.sample_rate)
        controls, face, self._version = board.current
        self._face = FacePost(fps, face, seed)
        self._motion = MotionModel(fps, seed)
        self._stream: Stream = engine.create_stream(controls)
        self._pace = source.realtime and fps > engine.cfg.fps
        self._last_release = 0.0
        self._next_status = time.monotonic() + STATUS_EVERY_S
        self._exit_on_device_loss = exit_on_device_loss
        self._lost = False  # the microphone went away and has not delivered since
        self._heard: str | None = None  # the voice's recent emotion
        for sink in self.sinks:
            sink.on_sent = self._sent
            sink.lossless = not source.realtime

    def run(self, stop: threading.Event) -> Summary:
        """Stream until the input ends or `stop` is set; every sink ends on a neutral frame."""
        stream = self._stream
        try:
            self.source.start()
            while not stop.is_set():
                try:
                    chunk = self.source.read(READ_TIMEOUT_S)
                except DeviceLost as lost:
                    self._wait_for_device(lost, stop)
                    continue
                if chunk is None:
                    if self.source.finished:
                        break
                elif len(chunk):
                    if self._lost:
                        self._lost = False
                        log.info("the microphone is back: streaming again")
                    self._apply_controls()
                    stream.accept_waveform(self.engine.sample_rate, chunk)
                    self.stats.record_audio(chunk)
                    while self.engine.is_ready(stream):
                        self.engine.step([stream])
                    self._check_engine()
                    self._emit(finished=False)
                self._report()
            if not stop.is_set():  # end of input: decode the tail, then the exact last frame
                stream.input_finished()
                while not stream.done:
                    self.engine.step([stream])
                self._check_engine()
                self._emit(finished=True)
        finally:
            if self.console is not None:  # before the sinks' last log lines, which would redraw it
                self.console.end_status()
            last = neutral_frame(self._clock.next_index, self.fps, self._motion.rest())
            for sink in self.sinks:
                sink.close(last)
            self.source.close()
            stream.close()
        return Summary(self.stats.frames, stream.samples_received / self.engine.sample_rate,
                       self.stats.run_latency_ms(), sum(s.drops for s in self.sinks), self.source.overruns,
                       stop.is_set(), self._errors(), self.source.ahead_of_real_time)

    def _wait_for_device(self, lost: DeviceLost, stop: threading.Event) -> None:
        """Rest every avatar on a neutral face until the microphone opens again (or stop)."""
        if self._exit_on_device_loss:
            raise UserError(f"{lost}; stopping as --exit-on-device-loss asks") from None
        if not self._lost:
            log.warning("%s; the avatars rest on a neutral face until it is back "
                        "(--exit-on-device-loss stops instead)", lost)
            self._lost = True
        while not stop.is_set():
            neutral = neutral_frame(self._clock.next_index, self.fps, self._motion.rest())
            for sink in self.sinks:
                sink.submit(neutral)
            if stop.wait(REOPEN_EVERY_S):
                return
            try:
                self.source.start()
                return
            except UserError:
                continue

    def _check_engine(self) -> None:
        if self._stream.error is not None:
            raise RuntimeError(f"the engine failed: {self._stream.error}")

    def _apply_controls(self) -> None:
        controls, face, version = self.board.current
        if version != self._version:
            self._stream.controls = controls  # already checked by the board
            self._face.settings = face
            self._version = version

    def _emit(self, finished: bool) -> None:
        stream = self._stream
        for frame in stream.frames():
            self._clock.push(frame)
        ready = self._clock.ready(stream.samples_received, finished)
        if not ready:
            return
        probabilities = stream.emotion_probabilities()
        emotion = None if probabilities is None else self.engine.cfg.emotion_labels[int(np.argmax(probabilities))]
        self._heard = emotion
        for index, seconds, weights in ready:
            shown, settings = self._face(seconds, weights), self._face.settings
            motion = self._motion(seconds, shown, settings.head_motion, settings.eye_motion)
            frame = OutFrame(index, seconds, self.fps, shown, emotion=emotion, motion=motion)
            release = 0.0
            if self._pace:
                release = max(time.monotonic(), self._last_release + PACE_FRACTION / self.fps)
                self._last_release = release
            for sink in self.sinks:
                sink.submit(frame, release)
            self.stats.frames += 1

    def _sent(self, frame: OutFrame, sent_at: float) -> None:
        """Latency of a frame: from its sound reaching the ring buffer to the packet leaving."""
        if frame.final:
            return
        arrived = self.source.arrival_time(round(frame.time * self.engine.sample_rate))
        if arrived is not None:
            self.stats.record_latency(sent_at - arrived)

    def _report(self) -> None:
        now = time.monotonic()
        if self.console is None or now < self._next_status:
            return
        self._next_status = now + STATUS_EVERY_S
        rate = self.stats.frame_rate()
        clients = [s.clients for s in self.sinks if s.clients is not None]
        self.console.status(status_parts(
            rate, self.stats.recent_latency_ms(), rate / self.fps if self.source.ahead_of_real_time else None,
            self.stats.input_dbfs(), self._emotion_in_effect(), sum(clients) if clients else None,
            sum(s.drops for s in self.sinks), self.source.overruns, self._errors()))

    def _emotion_in_effect(self) -> str:
        """What the face shows: the emotion set (`sad:0.8`, the calm default), or with `auto` the one
        heard in the voice lately."""
        labels = self.engine.cfg.emotion_labels
        label, strength = parse_emotion(self.engine.emotion_setting(self.board.current[0]), labels)
        if label is None:
            return f"{self._heard or '--'} (voice)"
        return labels[label] + ("" if strength == 1.0 else f":{strength:g}")

    def _errors(self) -> dict[str, int]:
        return {s.name: s.errors for s in self.sinks if s.errors}
