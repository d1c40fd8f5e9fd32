"""The terminal: log lines and the live status line share stderr without tearing each other.

Every module logs with `logging`; `Console` is the handler the command installs. On a terminal the
status line is redrawn in place (carriage return); in a log file it is a plain line every few
seconds, so CI logs stay readable.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

PROG = "emotalk-stream"
LOG_STATUS_EVERY_S = 5.0


class Console(logging.Handler):
    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
        super().__init__(logging.INFO)
        self._out = stream or sys.stderr
        self._tty = self._out.isatty()
        self._quiet = quiet
        self._lock = threading.Lock()
        self._status = ""
        self._last_plain = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if self._quiet and record.levelno < logging.WARNING:
            return
        kind = "warning: " if record.levelno == logging.WARNING else "error: " if record.levelno > logging.WARNING else ""
        with self._lock:
            self._clear()
            self._out.write(f"{PROG}: {kind}{record.getMessage()}\n")
            self._draw()
            self._out.flush()

    def status(self, text: str) -> None:
        """Show `text` as the live status line (nothing with --quiet)."""
        if self._quiet:
            return
        with self._lock:
            if self._tty:
                self._clear()
                self._status = text
                self._draw()
            elif time.monotonic() - self._last_plain >= LOG_STATUS_EVERY_S:
                self._last_plain = time.monotonic()
                self._out.write(f"{PROG}: {text}\n")
            self._out.flush()

    def end_status(self) -> None:
        """Leave the last status line on screen and move below it."""
        with self._lock:
            if self._tty and self._status:
                self._out.write("\n")
                self._out.flush()
            self._status = ""

    def _clear(self) -> None:
        if self._tty and self._status:
            self._out.write("\r\033[K")

    def _draw(self) -> None:
        if self._tty and self._status:
            self._out.write(self._status)


def install(quiet: bool) -> Console:
    """Route the package's log records to a new Console on stderr."""
    console = Console(quiet=quiet)
    root = logging.getLogger("emotalk_stream")
    root.handlers[:] = [console]
    root.setLevel(logging.INFO)
    root.propagate = False
    # python-osc warns on the root logger about each malformed datagram it skips; the control
    # server already refuses and logs those once, in our words.
    logging.getLogger("pythonosc").setLevel(logging.ERROR)
    return console


@contextlib.contextmanager
def native_stderr_diverted(keep: bool = False) -> Iterator[None]:
    """Send what C libraries print on file descriptor 2 (PortAudio's and ALSA's diagnostics when a
    device goes away) to /dev/null, while Python's own messages keep the terminal through a
    duplicate of it. `keep` (--debug) leaves everything as it is. Only where sys.stderr is fd 2."""
    try:
        real = not keep and sys.stderr.fileno() == 2
    except (AttributeError, OSError, io.UnsupportedOperation):
        real = False
    if not real:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    sys.stderr = open(saved, "w", buffering=1, encoding=python_stderr.encoding, errors="backslashreplace",
                      closefd=False)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = python_stderr
