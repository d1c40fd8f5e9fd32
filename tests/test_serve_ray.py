"""emotalk-serve on Ray Serve, for real: a Ray cluster of two nodes on this machine (one CPU each,
so the two replicas land on separate nodes), the app deployed by the command itself
(`emotalk-serve --ray --ray-address ...`), real `websockets` clients speaking in real time. One
replica is killed mid-stream: its sessions end with a close that says why, their clients get back
in on a live replica, and the other replica's sessions lose no frame. Then Ctrl-C drains the app.

Needs `ray[serve]`; skipped without it. About 30 s; `-m "not ray"` leaves it out.
"""
from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from emotalk_stream.serve.cli import main as serve_main
from emotalk_stream.serve.protocol import GOING_AWAY, INTERNAL, NORMAL, PATH, TRY_LATER, decode_frame
from emotalk_stream.tools.loadtest_session import BLOCK_S, BLOCK_SAMPLES, Speech
from emotalk_stream.training.audio import SAMPLE_RATE
from emotalk_stream.training.framing import frame_count
from emotalk_stream.training.model_files import SAMPLE_SPEECH

ray = pytest.importorskip("ray", reason="the Ray Serve tests need ray[serve] (pip install 'ray[serve]')")
from emotalk_stream.serve.ray_app import APP, REPLICA_HEADER  # noqa: E402 - imports Ray
from emotalk_stream.serve.ray_proxy import PROXY_CALLBACK, PROXY_ENV, REPLICA_LOST  # noqa: E402

pytestmark = pytest.mark.ray

SPEECH = Speech.load([SAMPLE_SPEECH])
TOKEN = "ray-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_STREAMS = 6
HELLO = json.dumps({"type": "hello", "sample_rate": SAMPLE_RATE, "format": "s16le", "frames": "binary"})
START_S = 180.0  # cluster and replicas on a machine shared with training
SESSION_S = 6.0
KILL_AFTER_S = 2.0
CLOSE_WITHIN_S = 10.0  # a killed replica's sessions end by then, or it is a hang


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Nodes:
    """The cluster of tests/ray_nodes.py, started in a process of its own (why: there)."""

    address: str


@pytest.fixture(scope="module")
def cluster() -> Iterator[Nodes]:
    """Two Ray nodes on this machine, one CPU each, the proxy middleware on; this test's own
    driver connected. Every process it starts is stopped at the end."""
    env = {**os.environ, PROXY_ENV: PROXY_CALLBACK,
           # Both nodes are this machine: the worker node's proxy needs a port of its own.
           "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(free_port())}
    helper = subprocess.Popen([sys.executable, str(Path(__file__).with_name("ray_nodes.py"))], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        address = helper.stdout.readline().strip()
        assert address, f"the Ray nodes did not start (exit {helper.poll()})"
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        yield Nodes(address)
    finally:
        ray.shutdown()
        helper.stdin.close()  # the helper shuts its nodes down
        try:
            helper.wait(60)
        except subprocess.TimeoutExpired:
            helper.kill()


class Command:
    """`emotalk-serve --ray` as a user runs it, its stderr read line by line."""

    def __init__(self, argv: list[str]):
        self.process = subprocess.Popen([sys.executable, "-m", "emotalk_stream.serve.cli", *argv],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.said: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.put(line.rstrip())

    def wait_for(self, text: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not any(text in line for line in self.said):
            try:
                self.said.append(self.lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {seconds:.0f} s; it said: {self.said}") from None

    def stop(self, seconds: float) -> int:
        """Ctrl-C; the exit status (killed, and the test failed, after `seconds`)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            status = self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"still running {seconds:.0f} s after Ctrl-C; it said: {self.said}") from None
        self._reader.join()
        while not self.lines.empty():
            self.said.append(self.lines.get())
        return status


@dataclass
class Outcome:
    replica: str = ""
    fps: int = 0
    blocks: int = 0
    frames: list[int] = field(default_factory=list)
    final: bool = False
    code: int | None = None
    reason: str = ""
    ended: float = 0.0  # monotonic time the connection closed

    @property
    def lost(self) -> int:
        expected = frame_count(self.blocks * BLOCK_SAMPLES, SAMPLE_RATE, self.fps)
        return len(set(range(expected)) - set(self.frames))


async def speak(url: str, seconds: float, offset: int, opened: asyncio.Queue | None = None) -> Outcome:
    """One session: real speech in real time for `seconds`, then the end, every frame kept."""
    outcome = Outcome()
    async with connect(url, additional_headers=AUTH, compression=None, open_timeout=30) as ws:
        outcome.replica = ws.response.headers[REPLICA_HEADER]
        await ws.send(HELLO)
        ready = json.loads(await asyncio.wait_for(ws.recv(), 30))
        emotions, outcome.fps = ready["emotions"], ready["fps"]
        if opened is not None:
            opened.put_nowait(outcome.replica)

        async def receive() -> None:
            try:
                async for message in ws:
                    frame = decode_frame(message, emotions)
                    outcome.frames.append(frame.index)
                    outcome.final = outcome.final or frame.final
            except ConnectionClosed:
                pass  # the code and reason are kept below
            outcome.ended = time.monotonic()

        receiving = asyncio.create_task(receive())
        start = time.monotonic()
        try:
            for k in range(round(seconds / BLOCK_S)):
                await asyncio.sleep(max(0.0, start + k * BLOCK_S - time.monotonic()))
                await ws.send(SPEECH.block(offset + k * BLOCK_SAMPLES))
                outcome.blocks += 1
            await ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass
        await asyncio.wait_for(receiving, CLOSE_WITHIN_S)
        outcome.code, outcome.reason = ws.close_code, ws.close_reason or ""
    return outcome


def stats(port: int) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/stats", headers=AUTH)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for_replicas(port: int, count: int, gone: str, seconds: float) -> None:
    """Until /stats reports `count` live replicas, none of them `gone`."""
    deadline = time.monotonic() + seconds
    while len(replicas := {r["replica"] for r in stats(port)["replicas"]}) != count or gone in replicas:
        assert time.monotonic() < deadline, f"{replicas} after {seconds:.0f} s"
        time.sleep(0.5)


async def kill_replica_mid_stream(url: str, port: int) -> tuple[list[Outcome], list[Outcome], str, float]:
    """Sessions on both replicas; one replica killed mid-stream; its clients reconnect."""
    opened: asyncio.Queue[str] = asyncio.Queue()
    sessions: list[asyncio.Task[Outcome]] = []
    replicas: list[str] = []
    while len(set(replicas)) < 2 or len(sessions) < 4:  # the router spreads them; keep going until both have some
        assert len(sessions) < 12, f"12 sessions, all on {set(replicas)}"
        sessions.append(asyncio.create_task(speak(url, SESSION_S, len(sessions) * 7919, opened)))
        replicas.append(await asyncio.wait_for(opened.get(), 30))
    await asyncio.sleep(KILL_AFTER_S)
    victim = replicas[0]
    actor = next(r["actor"] for r in (await asyncio.to_thread(stats, port))["replicas"] if r["replica"] == victim)
    ray.kill(ray.get_actor(actor, namespace="serve"), no_restart=True)
    killed_at = time.monotonic()
    outcomes = await asyncio.gather(*sessions)
    back = await asyncio.gather(*(reconnect(url, i) for i, o in enumerate(outcomes) if o.replica == victim))
    return outcomes, back, victim, killed_at


async def reconnect(url: str, index: int) -> Outcome:
    """A client of the killed replica getting back in (Serve may need a moment to route around it)."""
    for attempt in range(10):
        try:
            return await speak(url, 1.0, index * 7919)
        except (OSError, ConnectionClosed, KeyError):
            await asyncio.sleep(0.5 * (attempt + 1))
    raise AssertionError("could not reconnect within 10 tries")


async def open_session(url: str) -> None:
    async with connect(url, open_timeout=30):
        pass


async def until_routed_to_all(url: str, port: int, seconds: float) -> None:
    """Until the proxy's router sends sessions to every replica /stats reports: a replacement
    replica is up (and in /stats) a little before the proxy routes to it. Two sessions held at
    once go to two replicas as soon as the router knows both."""
    deadline = time.monotonic() + seconds
    live = {r["replica"] for r in stats(port)["replicas"]}
    while True:
        held = [await connect(url, additional_headers=AUTH, open_timeout=30) for _ in live]
        routed = {ws.response.headers[REPLICA_HEADER] for ws in held}
        await asyncio.gather(*(ws.close() for ws in held))
        if routed == live:
            return
        assert time.monotonic() < deadline, f"sessions went to {routed} of {live} after {seconds:.0f} s"
        await asyncio.sleep(0.5)


async def fill_up(url: str) -> tuple[int, tuple[int | None, str]]:
    """Sessions that say hello and wait, until one is refused: how many got in, and the refusal.
    The router sends each to the least busy replica, so every replica is full by then."""
    connections = []
    try:
        while len(connections) < 8 * MAX_STREAMS:
            ws = await connect(url, additional_headers=AUTH, open_timeout=30)
            connections.append(ws)
            await ws.send(HELLO)
            try:
                await asyncio.wait_for(ws.recv(), 30)
            except ConnectionClosed:
                return len(connections) - 1, (ws.close_code, ws.close_reason)
        raise AssertionError(f"{len(connections)} sessions and no refusal")
    finally:
        await asyncio.gather(*(ws.close() for ws in connections))


async def ctrl_c_mid_stream(url: str, command: Command) -> tuple[Outcome, int]:
    """A session still speaking when the command gets Ctrl-C, and the command's exit status."""
    opened: asyncio.Queue[str] = asyncio.Queue()
    session = asyncio.create_task(speak(url, 30.0, 0, opened))
    await asyncio.wait_for(opened.get(), 30)
    await asyncio.sleep(1.0)
    status = await asyncio.to_thread(command.stop, 60)
    return await session, status


def test_two_replicas_on_two_nodes_survive_one_killed_mid_stream(cluster: Nodes) -> None:
    port = free_port()
    command = Command(["--ray", "--ray-address", cluster.address, "--replicas", "2", "--port", str(port),
                       "--max-streams", str(MAX_STREAMS), "--token", TOKEN])
    try:
        command.wait_for("Ctrl-C stops", START_S)
        url = f"ws://127.0.0.1:{port}{PATH}"
        assert any(url in line for line in command.said)
        nodes = {r["node"] for r in stats(port)["replicas"]}
        assert len(nodes) == 2, "one CPU per node: the two replicas run on separate Ray nodes"

        outcomes, back, victim, killed_at = asyncio.run(kill_replica_mid_stream(url, port))

        killed = [o for o in outcomes if o.replica == victim]
        kept = [o for o in outcomes if o.replica != victim]
        assert killed and kept
        for o in killed:  # ended at once, with the reason: not a hang, not a bare TCP drop
            assert (o.code, o.reason) == (INTERNAL, REPLICA_LOST)
            assert not o.final and o.ended - killed_at < CLOSE_WITHIN_S
        for o in kept:  # every frame of the other replica's sessions, then the final one and 1000
            assert (o.code, o.lost, o.final) == (NORMAL, 0, True), o
        for o in back:  # served again, by a live replica
            assert o.replica != victim
            assert (o.code, o.lost, o.final) == (NORMAL, 0, True), o

        wait_for_replicas(port, 2, victim, START_S)  # Serve has replaced the killed one
        asyncio.run(until_routed_to_all(url, port, START_S))
        opened, refusal = asyncio.run(fill_up(url))
        assert opened >= 2 * MAX_STREAMS, "the router fills every replica before one refuses"
        assert refusal == (TRY_LATER, f"server full ({MAX_STREAMS} of {MAX_STREAMS} sessions): try again later")
        with pytest.raises(InvalidStatus) as wrong:
            asyncio.run(open_session(url + "?token=wrong"))
        assert (wrong.value.response.status_code, wrong.value.response.body) == (401, b"wrong token\n")

        last, status = asyncio.run(ctrl_c_mid_stream(url, command))
        assert status == 0
        assert (last.code, last.reason, last.final) == (GOING_AWAY, "server shutting down", True), last
        assert any("stopping: finishing 1 session(s)" in line for line in command.said), command.said
        assert APP not in ray.serve.status().applications
    finally:
        if command.process.poll() is None:
            command.process.kill()
            command.process.wait()


@pytest.mark.parametrize("argv, says", [
    (["--replicas", "2"], "--replicas is an option of Ray Serve: add --ray"),
    (["--ray", "--replicas", "0"], "--replicas 0: give 1 or more"),
    (["--ray", "--replicas", "2", "--autoscale", "1:3"], "--replicas and --autoscale contradict"),
    (["--ray", "--autoscale", "3:1"], "--autoscale 3:1: give MIN:MAX"),
    (["--ray", "--target-sessions", "4"], "--target-sessions 4: give it with --autoscale"),
    (["--ray", "--grpc-port", "52001"], "--grpc-port: on Ray only WebSocket clients"),
    (["--ray", "--port", "0"], "--port 0: Ray Serve's proxies listen on one fixed port"),
    (["--ray", "--gpus-per-replica", "1", "--backend", "onnxruntime"], "ONNX Runtime runs on the CPU here"),
    (["--ray", "--ray-address", "127.0.0.1:1"], "--ray-address 127.0.0.1:1: no Ray cluster there"),
])
def test_bad_ray_options_are_one_line_and_exit_2(argv: list[str], says: str, capsys: pytest.CaptureFixture) -> None:
    """Refused before any Ray process starts, and at once."""
    assert serve_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err



def test_a_port_in_use_is_refused_before_ray_starts(capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve_main(["--ray", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--port {port}: the port is in use" in err[0], err
