"""`emotalk-soak`: a long run of `emotalk-stream --wav --no-pace` through every output at once.

The streamer runs as its own process, as users run it, on speech of the chosen length (the bundled
voice clip, repeated) with `--osc` in both formats, `--livelink`, `--ws` and `--record`. This
process receives everything on loopback and checks, per receiver, that exactly round(N x fps)
frames arrived, then the neutral frame, with frame indices and audio times that never drift. It
samples the streamer's resident memory and open file descriptors from /proc as the audio advances
(a WebSocket client also connects and leaves every few seconds, so a leak per connection shows).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pythonosc.osc_message import OscMessage
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from ..training.audio import SAMPLE_RATE, read_audio, write_wav
from ..training.framing import frame_count
from ..training.errors import UserError, add_debug_flag, run_cli
from ..training.model_files import SAMPLE_SPEECH

PROG = "emotalk-soak"
RECEIVE_BUFFER = 8 * 2**20
CHURN_EVERY_S = 5.0  # a second WebSocket client connects and leaves this often, in seconds of audio streamed


class UdpCounter:
    """Counts datagrams on a loopback port; `parse` turns each into (index, time) or None."""

    def __init__(self, parse: Any = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.parse = parse
        self.count = 0
        self.frames: list[tuple[int, float]] = []
        self.last: bytes = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.count += 1
            self.last = data
            if self.parse is not None:
                self.frames.append(self.parse(data))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def parse_arkit(data: bytes) -> tuple[int, float]:
    index, seconds = OscMessage(data).params[:2]
    return index, seconds


def parse_livelink(data: bytes) -> tuple[int, float]:
    position = 1
    for _ in range(2):  # device id, subject
        (length,) = struct.unpack_from(">i", data, position)
        position += 4 + length
    number, _, rate, _ = struct.unpack_from(">ifii", data, position)
    return number, number / rate


class WsClient:
    """A websockets client that keeps every frame's (index, time)."""

    def __init__(self, url: str):
        deadline = time.monotonic() + 60
        while True:
            try:
                self.connection = connect(url, open_timeout=2, max_size=2**20)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise UserError(f"the streamer's WebSocket at {url} never opened")
                time.sleep(0.1)
        self.frames: list[tuple[int, float]] = []
        self.final = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self.connection:
                for text in self.connection:
                    message = json.loads(text)
                    if message.get("final"):
                        self.final = True
                    else:
                        self.frames.append((message["frame"], message["time"]))
        except ConnectionClosed:  # the server closing ends the reading
            pass

    def close(self) -> None:
        self.connection.close()
        self._thread.join(5)


def proc_status(pid: int) -> tuple[float, int]:
    """(resident MB, open file descriptors) of process `pid`."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def check(frames: list[tuple[int, float]], expected: int, fps: int,
          on_wire: Callable[[np.ndarray], np.ndarray] = lambda t: t) -> dict[str, Any]:
    """Frame k must carry index k and time k / fps as its format writes it (`on_wire`: float32 in
    OSC, 6 decimals in JSON): any drift at all is reported."""
    indices = np.array([f[0] for f in frames], dtype=np.int64)
    times = np.array([f[1] for f in frames], dtype=np.float64)
    drift = float(np.abs(times - on_wire(indices / fps)).max()) if len(frames) else math.inf
    return {"frames": len(frames), "in_order": bool(np.array_equal(indices, np.arange(len(frames)))),
            "time_drift_max_s": drift,
            "ok": len(frames) == expected and bool(np.array_equal(indices, np.arange(expected))) and drift == 0.0}


def soak(seconds: float, fps: int, warmup: float, engine: str | None) -> dict[str, Any]:
    speech = read_audio(SAMPLE_SPEECH)
    audio = np.take(speech, np.arange(int(seconds * SAMPLE_RATE)), mode="wrap")
    expected = frame_count(len(audio), SAMPLE_RATE, fps)
    vmc, arkit, livelink = UdpCounter(), UdpCounter(parse_arkit), UdpCounter(parse_livelink)
    with tempfile.TemporaryDirectory(prefix="emotalk-soak-") as tmp:
        wav, record = Path(tmp) / "speech.wav", Path(tmp) / "take.npy"
        write_wav(wav, audio)
        del audio, speech
        ws_port = _free_tcp_port()
        command = [sys.executable, "-m", "emotalk_stream.streamer.cli", "--wav", str(wav), "--no-pace",
                   "--fps", str(fps), "--quiet", "--osc", f"127.0.0.1:{vmc.port}",
                   "--osc-format", "vmc", "--osc", f"127.0.0.1:{arkit.port}", "--osc-format", "arkit",
                   "--livelink", f"127.0.0.1:{livelink.port}",
                   "--ws", f"127.0.0.1:{ws_port}", "--wait-for-client", "--record", str(record)]
        command += ["--engine", engine] if engine else []
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        started = time.monotonic()
        url = f"ws://127.0.0.1:{ws_port}/ws"
        client = WsClient(url)
        samples: list[tuple[float, float, int]] = []  # (audio seconds, rss MB, fds)
        next_churn = CHURN_EVERY_S  # in the stream's time, so an unpaced run churns as often per minute of audio
        churned = 0
        try:
            while process.poll() is None:
                time.sleep(0.5)
                try:
                    rss, fds = proc_status(process.pid)
                except OSError:
                    break
                streamed = len(client.frames) / fps
                if not client.final:  # streaming, not shutting down (which frees and allocates)
                    samples.append((streamed, rss, fds))
                if streamed > next_churn and not client.final:
                    next_churn = streamed + CHURN_EVERY_S
                    try:
                        with connect(url, open_timeout=5):
                            churned += 1
                    except OSError:
                        # The server closes once the stream ends; refused while streaming is a failure.
                        ending = time.monotonic() + 2.0
                        while not client.final and process.poll() is None and time.monotonic() < ending:
                            time.sleep(0.05)
                        if not client.final and process.poll() is None:
                            raise
            stderr = process.communicate(timeout=60)[1]
        finally:
            process.kill()
        wall = time.monotonic() - started
        time.sleep(0.5)
        client.close()
        for counter in (vmc, arkit, livelink):
            counter.close()
        recorded = len(np.load(record, mmap_mode="r")) if record.exists() else 0
    if process.returncode != 0:
        raise UserError(f"the streamer failed (exit {process.returncode}): {stderr.strip()[-500:]}")
    after = [s for s in samples if s[0] >= warmup]
    if len(after) < 2:
        raise UserError(f"the run was too short to measure memory after {warmup:.0f} s of audio: "
                        f"give more --seconds or a smaller --warmup")
    rss_start, rss_end = after[0][1], max(s[1] for s in after)
    return {
        "audio_seconds": seconds, "fps": fps, "expected_frames": expected, "wall_seconds": round(wall, 1),
        "vmc_bundles": vmc.count, "vmc_ok": vmc.count == expected + 1,
        "arkit": check(arkit.frames[:-1], expected, fps, lambda t: t.astype(np.float32).astype(np.float64)),
        "livelink": check(livelink.frames[:-1], expected, fps),
        "websocket": {**check(client.frames, expected, fps, lambda t: np.round(t, 6)), "final": client.final},
        "recorded_rows": recorded, "record_ok": recorded == expected,
        "rss_mb_after_warmup": round(rss_start, 1), "rss_mb_peak_after": round(rss_end, 1),
        "rss_growth": round(rss_end / rss_start - 1, 4),
        "fds_after_warmup": after[0][2], "fds_peak_after_warmup": max(s[2] for s in after), "warmup_seconds": warmup,
        "ws_clients_churned": churned,
    }


def _free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Soak test: a long --no-pace run through every output.")
    p.add_argument("--seconds", type=float, default=3600.0, help="seconds of speech (default 3600)")
    p.add_argument("--warmup", type=float, default=300.0,
                   help="audio seconds after which memory is the baseline (default 300)")
    p.add_argument("--fps", type=int, choices=(30, 60), default=30, help="the streamer's output rate (default 30)")
    p.add_argument("--engine", help="an exported engine artifact (default: the bundled model on torch)")
    add_debug_flag(p)
    return p


def _run(args: argparse.Namespace) -> None:
    if not 0 <= args.warmup < args.seconds:
        raise UserError("--warmup must be at least 0 and less than --seconds")
    print(json.dumps(soak(args.seconds, args.fps, args.warmup, args.engine), indent=2))


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, _run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
