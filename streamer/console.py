"""The terminal: log lines and the live status line share stderr without tearing each other.

Every module logs with `logging`; `Console` is the handler the command installs. On a terminal the
status line is redrawn in place (carriage return), cut to the terminal's width so that it never
wraps (a wrapped line cannot be redrawn in place and turns into a scrolling log); in a log file it
is a plain line every few seconds, so CI logs stay readable.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TextIO

PROG = "emotalk-stream"
LOG_STATUS_EVERY_S = 5.0
SEPARATOR = " | "
DEFAULT_COLUMNS = 80  # where the terminal does not say


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

    def status(self, parts: Sequence[tuple[str, int]]) -> None:
        """Show `parts` ((text, rank), see stats.status_parts) as the live status line (nothing with
        --quiet); on a terminal, as many as fit its width, the highest ranks left out first."""
        if self._quiet:
            return
        with self._lock:
            if self._tty:
                self._clear()
                self._status = fit(parts, self._columns() - 1)  # the last column would wrap on some terminals
                self._draw()
            elif time.monotonic() - self._last_plain >= LOG_STATUS_EVERY_S:
                self._last_plain = time.monotonic()
                self._out.write(f"{PROG}: {SEPARATOR.join(text for text, _ in parts)}\n")
            self._out.flush()

    def end_status(self) -> None:
        """Erase the status line for good: the summary that follows replaces it, and no later log
        line redraws it."""
        with self._lock:
            self._clear()
            self._out.flush()
            self._status = ""

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self._out.fileno()).columns or DEFAULT_COLUMNS
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return DEFAULT_COLUMNS

    def _clear(self) -> None:
        if self._tty and self._status:
            self._out.write("\r\033[K")

    def _draw(self) -> None:
        if self._tty and self._status:
            self._out.write(self._status)


def fit(parts: Sequence[tuple[str, int]], width: int) -> str:
    """The parts joined into at most `width` characters, leaving out the highest ranks first."""
    shown = list(parts)
    while len(shown) > 1 and len(SEPARATOR.join(text for text, _ in shown)) > width:
        shown.remove(max(shown, key=lambda part: part[1]))
    return SEPARATOR.join(text for text, _ in shown)[:width]


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
