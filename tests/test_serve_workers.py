"""`emotalk-serve --workers N`: worker processes sharing one port, with real sockets and clients.
Sessions land on every worker and each gets all its frames, `--max-streams` caps the workers
together, a killed worker's sessions end while the others' go on and a new worker takes its place,
SIGTERM lets every session finish, and a worker that cannot start stops the command with one line."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from test_serve_websocket import AUDIO, HELLO, RATE, check_frames, frames_of, s16le, session, until_closed

STARTUP_S = 30  # how long a new worker may take to load the model and serve


def start_workers(*args: str) -> tuple[subprocess.Popen, str]:
    """`emotalk-serve --workers 2` on a free port, once every worker serves; the process and its
    WebSocket URL."""
    process = subprocess.Popen([sys.executable, "-m", "emotalk_stream.serve.cli", "--port", "0", "--no-grpc",
                                "--workers", "2", *args], stderr=subprocess.PIPE, text=True)
    lines, url = [], None
    for line in process.stderr:
        lines.append(line)
        found = re.search(r"WebSocket sessions at (ws://\S+/v1/stream)", line)
        url = found.group(1) if found else url
        if "2 worker processes share the port" in line and url:
            return process, url
    raise AssertionError(f"emotalk-serve --workers 2 did not start: {''.join(lines)}")


def stats(url: str) -> dict:
    with urllib.request.urlopen(url.replace("ws://", "http://").replace("/v1/stream", "/stats"), timeout=5) as reply:
        return json.load(reply)


async def open_session(url: str) -> tuple[ClientConnection, list[str]]:
    """A connection with its hello answered (the session holds a seat until it ends), and the
    emotion labels its frames name."""
    ws = await connect(url)
    await ws.send(json.dumps(HELLO))
    ready = json.loads(await ws.recv())
    return ws, ready["emotions"]


async def talk(ws: ClientConnection, seconds: float, pace: float = 0.0) -> list[str | bytes]:
    """Send `seconds` of speech in 20 ms blocks, `pace` seconds apart, and the end; every message
    until the close (the server may cut the connection off first)."""
    pcm = s16le(AUDIO[:round(seconds * RATE)])
    reader = asyncio.create_task(until_closed(ws))
    with contextlib.suppress(ConnectionClosed):
        for i in range(0, len(pcm), 640):
            await ws.send(pcm[i:i + 640])
            await asyncio.sleep(pace)
        await ws.send(json.dumps({"type": "end"}))
    return await reader


def test_sessions_land_on_both_workers_and_each_gets_every_frame() -> None:
    process, url = start_workers("--max-streams", "16")
    try:
        async def clients() -> tuple[dict, list, list]:
            opened = [await open_session(url) for _ in range(12)]
            held = stats(url)  # every session holds its seat now
            received = await asyncio.gather(*(talk(ws, 1.0) for ws, _ in opened))
            return held, [emotions for _, emotions in opened], received

        held, emotions, received = asyncio.run(asyncio.wait_for(clients(), 60))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert held["sessions"] == 12 and [w["sessions"] >= 1 for w in held["workers"]] == [True, True], held
    assert sum(w["sessions"] for w in held["workers"]) == 12 and len({w["pid"] for w in held["workers"]}) == 2
    for labels, messages in zip(emotions, received):
        check_frames(frames_of(messages, labels), 1.0)


def test_max_streams_caps_the_workers_together() -> None:
    process, url = start_workers("--max-streams", "3")
    try:
        async def clients() -> tuple[list, int, str, dict]:
            held = [ws for ws, _ in [await open_session(url) for _ in range(3)]]
            async with connect(url) as extra:  # whichever worker accepts it, the server is full
                await extra.send(json.dumps(HELLO))
                await until_closed(extra)
                refused = (extra.close_code, extra.close_reason)
            counters = stats(url)
            for ws in held:
                await ws.close()
            return held, *refused, counters

        _, code, reason, counters = asyncio.run(asyncio.wait_for(clients(), 30))
        deadline = time.monotonic() + 10
        while stats(url)["sessions"] and time.monotonic() < deadline:  # the seats come back
            time.sleep(0.1)
        after = asyncio.run(asyncio.wait_for(session(url, HELLO, s16le(AUDIO[:RATE // 2]), 640), 30))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert code == 1013 and "server full (3 of 3 sessions)" in reason
    assert counters["sessions"] == 3 and counters["refused"] == 1
    check_frames(frames_of(after[1], after[0]["emotions"]), 0.5)


def test_a_killed_worker_is_replaced_and_the_other_workers_sessions_lose_nothing() -> None:
    process, url = start_workers("--max-streams", "16")
    try:
        async def clients() -> tuple[dict, list, list]:
            opened = [await open_session(url) for _ in range(8)]
            held = stats(url)
            victim = next(w for w in held["workers"] if w["sessions"])
            talking = [asyncio.create_task(talk(ws, 3.0, pace=0.02)) for ws, _ in opened]
            await asyncio.sleep(1.0)
            os.kill(victim["pid"], signal.SIGKILL)
            received = await asyncio.gather(*talking)
            return held, victim, [emotions for _, emotions in opened], received, [ws.close_code for ws, _ in opened]

        held, victim, emotions, received, codes = asyncio.run(asyncio.wait_for(clients(), 60))
        deadline = time.monotonic() + STARTUP_S  # the parent starts a new worker in its place
        while time.monotonic() < deadline:
            workers = stats(url)["workers"]
            if all(w["pid"] not in (0, victim["pid"]) for w in workers):
                break
            time.sleep(0.5)
        after = asyncio.run(asyncio.wait_for(session(url, HELLO, s16le(AUDIO[:RATE // 2]), 640), 30))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    lost = [code for code in codes if code != 1000]
    assert len(lost) == victim["sessions"] and all(code == 1006 for code in lost), codes  # cut off, no close frame
    for labels, messages, code in zip(emotions, received, codes):
        if code == 1000:  # the other worker's sessions: every frame, then the final one
            check_frames(frames_of(messages, labels), 3.0)
    assert all(w["pid"] not in (0, victim["pid"]) for w in workers), workers
    check_frames(frames_of(after[1], after[0]["emotions"]), 0.5)
    assert re.search(r"worker \d ended \(exit -9\): its sessions are gone; starting a new one", process.stderr.read())


def test_sigterm_lets_every_workers_sessions_finish() -> None:
    process, url = start_workers()
    try:
        async def clients() -> list:
            opened = [await open_session(url) for _ in range(6)]
            pcm = s16le(AUDIO[:RATE])
            for ws, _ in opened:
                await ws.send(pcm)
            for ws, _ in opened:
                await ws.recv()  # each worker has its sessions' audio
            process.send_signal(signal.SIGTERM)
            return [(labels, await until_closed(ws), ws.close_code, ws.close_reason) for ws, labels in opened]

        ended = asyncio.run(asyncio.wait_for(clients(), 30))
        assert process.wait(30) == 0
    finally:
        process.kill()
    for labels, messages, code, reason in ended:  # the first frame was read above
        frames = frames_of(messages, labels)
        assert frames[-1].final and [f.index for f in frames] == list(range(1, 31))
        assert (code, reason) == (1001, "server shutting down")
    output = process.stderr.read()
    assert "Traceback" not in output


def test_a_worker_that_cannot_start_stops_the_command_with_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "emotalk_stream.serve.cli", "--port", "0", "--no-grpc",
                           "--workers", "2", "--engine", "nowhere"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--engine nowhere is not an engine artifact" in done.stderr, done.stderr
