"""The terminal: log lines and the live status line share stderr without tearing each other.

Every module logs with `logging`; `Console` is the handler the command installs. On a terminal the
status line is redrawn in place (carriage return); in a log file it is a plain line every few
seconds, so CI logs stay readable.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
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
    return console
