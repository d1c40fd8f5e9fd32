"""`emotalk-loadtest` against a real `emotalk-serve` on loopback, as users run both: the figures of
a small run, the refusal path, the capacity search and the bad-input exits. Speed figures come from
the benchmark command (docs/loadtest.md), not from here: only their sanity is checked."""
from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.tools.loadtest_session import BLOCK_SAMPLES, SessionResult, Speech
from waiting import free_port, stop_process, wait_for

CLI = [sys.executable, "-m", "emotalk_stream.tools.loadtest"]
SERVE = [sys.executable, "-m", "emotalk_stream.serve.cli"]
TOKEN = "loadtest-token"
START_TIMEOUT_S = 60.0
GRPC = importlib.util.find_spec("grpc") is not None  # the serve extra
needs_grpc = pytest.mark.skipif(not GRPC, reason="the A2F-3D API needs grpcio: pip install 'emotalk-stream[serve]'")


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass(frozen=True)
class Server:
    url: str  # the WebSocket endpoint
    stats: str
    grpc: str  # HOST:PORT of the A2F-3D API


def _serve(max_streams: int, *options: str) -> Iterator[Server]:
    port, grpc_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    grpc = ["--grpc-port", str(grpc_port)] if GRPC else ["--no-grpc"]
    process = subprocess.Popen([*SERVE, "--port", str(port), *grpc, "--token", TOKEN, "--max-streams",
                                str(max_streams), "--quiet", *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        wait_for(lambda: _healthy(port) or process.poll() is not None, "emotalk-serve to listen", START_TIMEOUT_S)
        assert process.poll() is None, f"emotalk-serve exited: {process.stderr.read()}"
        yield Server(f"ws://127.0.0.1:{port}/v1/stream", f"http://127.0.0.1:{port}/stats", f"127.0.0.1:{grpc_port}")
    finally:
        stop_process(process, 10)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # A 40 ms look-ahead rather than the bundled engine's none, so the latency floor checked below
    # (a frame waits for its look-ahead) is above zero and can fail.
    yield from _serve(8, "--lookahead-ms", "40")


@pytest.fixture(scope="module")
def one_stream_server() -> Iterator[Server]:
    yield from _serve(max_streams=1)


def loadtest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def report(*args: str) -> dict:
    done = loadtest(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_two_real_time_streams(server: Server, time_limit: None) -> None:
    got = report("--url", server.url, "--token", TOKEN, "--streams", "2", "--seconds", "3")
    assert got["sessions"] == {"completed": 2, "refused": 0, "failed": 0, "reasons": {}}
    assert got["server"]["fps"] == 30
    assert got["frames"] == {"expected": 2 * 90, "received": 2 * 90, "lost": 0}  # 3 s at 30 fps, twice
    latency = got["latency_ms"]
    assert latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    # A frame waits for its look-ahead: its sound's block left at least look-ahead - one block before
    # the audio it needs, so a median below that would mean the wrong block was timed.
    assert latency["p50"] >= got["server"]["lookahead_ms"] - 20
    assert 27 < got["fps"]["min"] <= got["fps"]["mean"] < 33
    assert got["cpu"]["server_cores"] > 0 and got["cpu"]["loadgen_cores"] > 0
    assert got["pacing_lag_ms"]["p95"] is not None


def test_binary_frames_and_the_table(server: Server, time_limit: None) -> None:
    done = loadtest("--url", server.url, "--token", TOKEN, "--streams", "1", "--seconds", "2", "--frames", "binary")
    assert done.returncode == 0, done.stderr
    assert "(binary frames)" in done.stdout
    assert "60 expected, 60 received, 0 lost" in done.stdout
    assert "1 completed, 0 refused, 0 failed" in done.stdout


def test_a_full_server_refuses_and_the_report_says_so(one_stream_server: Server, time_limit: None) -> None:
    got = report("--url", one_stream_server.url, "--token", TOKEN, "--streams", "2", "--seconds", "2")
    sessions = got["sessions"]
    assert (sessions["completed"], sessions["refused"], sessions["failed"]) == (1, 1, 0)
    assert any("server full" in reason for reason in sessions["reasons"])
    assert got["frames"]["lost"] == 0 and got["frames"]["expected"] == 60  # the held session's
    assert got["realtime"] is False


def test_find_max_stops_at_the_servers_limit(one_stream_server: Server, time_limit: None) -> None:
    # A generous --p95-ms: this checks the search, not this machine's speed.
    got = report("--url", one_stream_server.url, "--token", TOKEN, "--streams", "1", "--seconds", "1", "--find-max",
                 "--p95-ms", "2000")
    assert [(p["streams"], p["realtime"]) for p in got["probes"]] == [(1, True), (2, False)]
    assert got["max_streams"] == 1
    assert got["probes"][1]["sessions"]["refused"] == 1


@needs_grpc
def test_audio2face_grpc_clients(server: Server, time_limit: None) -> None:
    got = report("--grpc", server.grpc, "--token", TOKEN, "--streams", "2", "--seconds", "2", "--stats", server.stats)
    assert got["protocol"] == "grpc"
    assert got["sessions"]["completed"] == 2
    assert got["frames"] == {"expected": 2 * 60, "received": 2 * 60, "lost": 0}
    latency = got["latency_ms"]
    assert got["server"]["lookahead_ms"] is None  # A2F-3D does not say; the WebSocket ready does
    assert 20 <= latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert got["cpu"]["server_cores"] > 0


@needs_grpc
def test_audio2face_grpc_refusal_and_token(one_stream_server: Server, time_limit: None) -> None:
    got = report("--grpc", one_stream_server.grpc, "--token", TOKEN, "--streams", "2", "--seconds", "1")
    assert (got["sessions"]["completed"], got["sessions"]["refused"]) == (1, 1)
    assert any(reason.startswith("RESOURCE_EXHAUSTED") for reason in got["sessions"]["reasons"])
    assert got["cpu"]["server_cores"] is None  # no --stats
    one_line_error(loadtest("--grpc", one_stream_server.grpc, "--token", "nope", "--seconds", "1"),
                   "UNAUTHENTICATED", "--token")


def one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emotalk-loadtest: error: "), done.stderr
    for word in words:
        assert word in lines[0]


def test_wrong_token_names_the_servers_reason(server: Server) -> None:
    one_line_error(loadtest("--url", server.url, "--token", "nope", "--seconds", "1"), "401", "wrong token", "--token")


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    nobody = f"ws://127.0.0.1:{free_port(socket.SOCK_STREAM)}/v1/stream"
    one_line_error(loadtest("--url", nobody, "--seconds", "1"), "cannot connect", "start emotalk-serve")
    one_line_error(loadtest("--url", "http://127.0.0.1:8765/v1/stream"), "not a WebSocket URL", "ws://")
    one_line_error(loadtest("--url", nobody, "--wav", str(tmp_path / "missing.wav")), "does not exist")
    one_line_error(loadtest("--grpc", "no-port"), "HOST:PORT")
    one_line_error(loadtest("--url", nobody, "--streams", "0"), "--streams")


def test_latency_is_timed_from_the_block_that_holds_the_frames_sound() -> None:
    result = SessionResult(0, ready={"fps": 30})
    result.sent = [10.0 + 0.02 * k for k in range(50)]  # one second of 20 ms blocks
    # frame 1 shows t = 1/30 s, sample 533, which went in block 1 (samples 320-639); frame 30 is
    # the neutral final frame after the 30 frames of the audio; frame 1 came twice.
    result.frames = [(0, 0.0, 10.1), (1, 1 / 30, 10.15), (1, 1 / 30, 10.2), (30, 1.0, 11.5)]
    assert result.expected_frames == 30
    assert [f[0] for f in result.frames_shown()] == [0, 1]
    assert np.allclose(result.latencies(), [0.1, 10.15 - 10.02])


def test_speech_loops_without_a_seam() -> None:
    audio = np.arange(1000, dtype=np.float32) / 32767
    speech = Speech(audio, ["ramp"])
    block = np.frombuffer(speech.block(900), dtype="<i2")
    assert len(block) == BLOCK_SAMPLES
    assert block.tolist() == [(900 + i) % 1000 for i in range(BLOCK_SAMPLES)]
