"""The base of every sink: its own thread and a bounded queue, so no receiver can stall the audio.

`submit` never blocks: when a sink falls behind, its oldest queued frame is dropped and counted.
A failing send (a receiver that is down, an unplugged network, a full disk) is logged once,
counted and retried with the next frame; the stream and the other sinks go on.
"""
from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable

from .frames import OutFrame

log = logging.getLogger(__name__)

QUEUE_FRAMES = 16  # about half a second at 30 fps: more than any healthy receiver needs
# A receiver that is down fails every other UDP send (each ICMP error is reported once), so a
# send that works says little: recovery is announced after this long without an error.
RECOVERED_AFTER_S = 2.0


class Sink(ABC):
    """Subclasses implement `_send` (and `_open`/`_shutdown` where they hold a socket or file)."""

    def __init__(self, name: str, queue_frames: int = QUEUE_FRAMES):
        self.name = name
        self.sent = 0
        self.drops = 0
        self.errors = 0
        self.on_sent: Callable[[OutFrame, float], None] | None = None  # (frame, monotonic send time)
        # Lossless: input faster than real time (a file, a pipe), where every frame must arrive, so
        # a full queue waits for room instead of dropping (a live show wants the newest face).
        self.lossless = False
        self._queue: deque[tuple[OutFrame, float]] = deque()
        self._capacity = queue_frames
        self._wake = threading.Condition()
        self._closing = False
        self._failing = False
        self._last_error = 0.0
        self._thread: threading.Thread | None = None

    @property
    def clients(self) -> int | None:
        """How many clients are connected, for a server (the status line shows it); None for a sink
        that sends to one receiver."""
        return None

    def open(self) -> None:
        """Claim the socket or file and start the sending thread; raises `UserError` on bad setup."""
        self._open()
        self._thread = threading.Thread(target=self._run, name=f"sink {self.name}", daemon=True)
        self._thread.start()

    def submit(self, frame: OutFrame, release_at: float = 0.0) -> None:
        """Queue `frame` to go out no earlier than `release_at` (time.monotonic); a full queue drops
        its oldest frame, or waits for room when `lossless`."""
        with self._wake:
            while self.lossless and len(self._queue) >= self._capacity and self._thread is not None \
                    and self._thread.is_alive():
                self._wake.wait(0.1)
            if len(self._queue) >= self._capacity:
                self._queue.popleft()
                self.drops += 1
            self._queue.append((frame, release_at))
            self._wake.notify_all()

    def close(self, last: OutFrame | None = None, timeout: float = 1.0) -> None:
        """Send what is queued, then `last` (the neutral frame), then release the socket or file."""
        if self._thread is None:
            return
        if last is not None:
            self.submit(last)
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        self._thread.join(timeout)
        self._thread = None
        self._shutdown()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue:
                    return
                frame, release_at = self._queue.popleft()
                self._wake.notify_all()  # room for a waiting `submit`
            delay = release_at - time.monotonic()
            if delay > 0 and not self._closing:
                time.sleep(delay)
            self._deliver(frame)

    def _deliver(self, frame: OutFrame) -> None:
        try:
            self._send(frame)
        except Exception as exc:  # noqa: BLE001 - a sink fails alone, the stream goes on
            self.errors += 1
            self._last_error = time.monotonic()
            if not self._failing:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                log.warning("%s: send failed (%s); still streaming, retrying with every frame", self.name, reason)
                self._failing = True
            return
        if self._failing and time.monotonic() - self._last_error > RECOVERED_AFTER_S:
            log.info("%s: sending again", self.name)
            self._failing = False
        self.sent += 1
        if self.on_sent is not None:
            self.on_sent(frame, time.monotonic())

    def _open(self) -> None:
        """Set up the transport before streaming starts (sockets, files)."""

    def _shutdown(self) -> None:
        """Release the transport after the last frame."""

    @abstractmethod
    def _send(self, frame: OutFrame) -> None:
        """Put one frame on the wire (or in the file); a failure is reported and retried."""
