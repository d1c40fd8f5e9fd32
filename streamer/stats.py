"""What the status line and the final summary report: frame rate, latency, input level, losses."""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Mapping

import numpy as np

LATENCY_WINDOW = 600  # frames: the last 10-20 s
HISTOGRAM_MS = 5000  # whole-run latencies in 1 ms bins, constant memory however long the stream
RECEIVER_CHARS = 24  # a failing receiver's name on the status line, shortened to this


class Stats:
    """Written by the streaming loop and the sink threads."""

    def __init__(self) -> None:
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._histogram = np.zeros(HISTOGRAM_MS + 1, dtype=np.int64)
        self._lock = threading.Lock()
        self.frames = 0
        self._rate_mark = (time.monotonic(), 0)
        self._energy = 0.0
        self._count = 0

    def record_latency(self, seconds: float) -> None:
        with self._lock:
            self.latencies.append(seconds)
            self._histogram[min(max(int(round(seconds * 1000)), 0), HISTOGRAM_MS)] += 1

    def record_audio(self, chunk: np.ndarray) -> None:
        self._energy += float(np.dot(chunk, chunk))
        self._count += len(chunk)

    def input_dbfs(self) -> float:
        """RMS level of the audio since the last call, in dB below full scale."""
        rms = math.sqrt(self._energy / self._count) if self._count else 0.0
        self._energy, self._count = 0.0, 0
        return 20 * math.log10(max(rms, 1e-5))

    def frame_rate(self) -> float:
        """Frames per second since the last call."""
        now = time.monotonic()
        then, frames = self._rate_mark
        self._rate_mark = (now, self.frames)
        return (self.frames - frames) / max(now - then, 1e-6)

    def recent_latency_ms(self) -> tuple[float, float] | None:
        """(p50, p95) in milliseconds over the last frames sent, None before any."""
        with self._lock:
            recent = np.asarray(self.latencies)
        if not len(recent):
            return None
        p50, p95 = np.percentile(recent, [50, 95]) * 1000
        return float(p50), float(p95)

    def run_latency_ms(self) -> tuple[float, float] | None:
        """(p50, p95) in milliseconds (1 ms resolution) over every frame sent so far."""
        total = int(self._histogram.sum())
        if not total:
            return None
        cumulative = np.cumsum(self._histogram)
        p50, p95 = (int(np.searchsorted(cumulative, q * total)) for q in (0.5, 0.95))
        return float(p50), float(p95)


def status_parts(rate: float, latency_ms: tuple[float, float] | None, speed: float | None, dbfs: float,
                 emotion: str, clients: int | None, drops: int, overruns: int,
                 errors: Mapping[str, int]) -> list[tuple[str, int]]:
    """The status line's parts in the order shown, each with a rank: where a terminal is too narrow
    for all, the highest ranks are left out first (Console.status), so the frame rate, the latency
    and any failure stay. `speed` (times real time) replaces the latency for input that came faster
    than real time; `clients` is None without a WebSocket server; `errors`: sends failed by receiver."""
    parts = [(f"{rate:.0f} fps", 0),
             (f"{speed:.1f}x real time" if speed is not None else "latency --" if latency_ms is None
              else f"latency {latency_ms[0]:.0f}/{latency_ms[1]:.0f} ms", 1),
             (f"{dbfs:.0f} dBFS", 5), (f"emotion {emotion}", 6)]
    if clients is not None:
        parts.append((f"{clients} client{'' if clients == 1 else 's'}", 7))
    if drops:
        parts.append((f"drops {drops}", 3))
    if overruns:
        parts.append((f"overruns {overruns}", 4))
    failing = [name for name, count in errors.items() if count]
    if failing:
        more = f" +{len(failing) - 1}" if len(failing) > 1 else ""  # and as many other receivers
        parts.append((f"send errors {sum(errors.values())} ({shorten(failing[0])}{more})", 2))
    return parts


def shorten(receiver: str, chars: int = RECEIVER_CHARS) -> str:
    """`osc 192.168.1.20:39539` as it is; a long one keeps its kind and the end of its address or path."""
    if len(receiver) <= chars:
        return receiver
    kind, _, target = receiver.partition(" ")
    return f"{kind} ...{target[len(target) - (chars - len(kind) - 4):]}"
