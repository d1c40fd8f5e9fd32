"""Headless Chromium driven over the Chrome DevTools Protocol, and the PNGs it writes, for the
viewer tests."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import signal
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from websockets.sync.client import ClientConnection, connect

from waiting import wait_for

CHROMIUM = Path("/usr/bin/chromium")


class Tab:
    """One Chromium tab driven over the Chrome DevTools Protocol (a flattened session)."""

    def __init__(self, browser: ClientConnection):
        self._browser = browser
        self._id = 0
        self._session = None
        self.exceptions: list[str] = []  # uncaught JavaScript errors in the page
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self._session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=1280, height=800, deviceScaleFactor=1, mobile=False)
        self.call("Runtime.enable")

    def call(self, method: str, **params: object) -> dict:
        self._id += 1
        request = {"id": self._id, "method": method, "params": params}
        if self._session:
            request["sessionId"] = self._session
        self._browser.send(json.dumps(request))
        while True:
            reply = json.loads(self._browser.recv(timeout=20))
            if reply.get("method") == "Runtime.exceptionThrown":
                self.exceptions.append(reply["params"]["exceptionDetails"]["text"])
            if reply.get("id") == self._id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float = 15.0) -> None:
        wait_for(lambda: self.evaluate(expression), f"the page to show `{expression}`", timeout)

    def screenshot(self, fast: bool = True, **clip: float) -> bytes:
        """PNG of the viewport, or of `clip` (x, y, width, height); `fast` uses Chromium's quick encoder."""
        options = {"clip": {**clip, "scale": 1}} if clip else {}
        return base64.b64decode(self.call("Page.captureScreenshot", format="png", optimizeForSpeed=fast,
                                          **options)["data"])


def devtools_address(process: subprocess.Popen, timeout: float = 30.0) -> str:
    """Chromium prints its DevTools address on stderr; keep draining stderr so it never blocks."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    deadline, seen = time.monotonic() + timeout, []
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError("Chromium did not print its DevTools address:\n" + "".join(seen[-10:])) from None
        if found := re.search(r"DevTools listening on (ws://\S+)", line):
            return found.group(1)
        seen.append(line)


@contextlib.contextmanager
def open_tab(tmp_path: Path, *flags: str) -> Iterator[Tab]:
    """A headless Chromium, started with extra `flags`, with one tab; killed with its renderers afterwards."""
    process = subprocess.Popen(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0", "--hide-scrollbars", *flags,
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        with connect(devtools_address(process), max_size=None, open_timeout=10) as browser:
            yield Tab(browser)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the browser and its renderers, started in their own group
        process.wait(timeout=10)


def decode_png(data: bytes) -> np.ndarray:
    """(height, width, channels) uint8 pixels of an 8-bit RGB(A) PNG, all five row filters."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        header = body if kind == b"IHDR" else header
        if kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, "only what Chromium writes"
    bpp = 3 if colour == 2 else 4
    rows = np.frombuffer(zlib.decompress(b"".join(chunks)), np.uint8).reshape(height, 1 + width * bpp)
    pixels = np.zeros((height, width * bpp), np.uint8)
    above = np.zeros(width * bpp, np.uint8)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            row = line.copy()
        elif kind == 1:  # Sub: a running sum per channel, wrapping at 256
            row = np.cumsum(line.reshape(width, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:  # Up
            row = line + above
        else:
            row = _unfilter_average_or_paeth(kind, line, above, bpp)
        pixels[y] = above = row
    return pixels.reshape(height, width, bpp)


def _unfilter_average_or_paeth(kind: int, line: np.ndarray, above: np.ndarray, bpp: int) -> np.ndarray:
    row, up = bytearray(line.tobytes()), above.tobytes()
    for i in range(len(row)):
        a, b, c = (row[i - bpp], up[i], up[i - bpp]) if i >= bpp else (0, up[i], 0)
        if kind == 3:
            predicted = (a + b) // 2
        else:
            p = a + b - c
            predicted = min((abs(p - a), 0, a), (abs(p - b), 1, b), (abs(p - c), 2, c))[2]
        row[i] = (row[i] + predicted) & 0xFF
    return np.frombuffer(bytes(row), np.uint8)
