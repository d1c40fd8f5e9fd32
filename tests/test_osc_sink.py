"""OSC out, received by real peers: python-osc's server, a raw socket, and Debian's oscdump (liblo)."""
from __future__ import annotations

import queue
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_server import ThreadingOSCUDPServer

from emotalk_stream.streamer.frames import OutFrame
from emotalk_stream.streamer.osc_sink import OscSink
from emotalk_stream.training.blendshapes import VMC_NAMES, vrm_presets
from emotalk_stream.training.errors import UserError
from waiting import free_port

PRESETS = ("A", "I", "U", "E", "O", "Blink_L", "Blink_R", "Joy", "Angry", "Sorrow", "Fun")
MESSAGES_PER_FRAME = 52 + len(PRESETS) + 1


def frame(index: int, fps: int = 30) -> OutFrame:
    weights = np.random.default_rng(index).random(52).astype(np.float32)  # distinct: misplacements show
    return OutFrame(index, index / fps, fps, weights)


@pytest.fixture
def server() -> Iterator[tuple[int, queue.Queue]]:
    """python-osc's threading server on a free port; every message lands in the queue."""
    received: queue.Queue = queue.Queue()
    dispatcher = Dispatcher()
    dispatcher.set_default_handler(lambda address, *args: received.put((address, args)))
    osc = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    thread = threading.Thread(target=osc.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield osc.server_address[1], received
    osc.shutdown()
    osc.server_close()


@pytest.fixture
def sink_to() -> Iterator:
    sinks: list[OscSink] = []

    def make(port: int, fmt: str) -> OscSink:
        sink = OscSink("127.0.0.1", port, fmt)
        sink.open()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()


def check_vmc_frame(messages: list[tuple[str, tuple]], f: OutFrame, tolerance: float) -> None:
    """52 perfect-sync values by name, then the 11 VRM presets, then Apply, in that order."""
    assert len(messages) == MESSAGES_PER_FRAME
    vals, apply = messages[:-1], messages[-1]
    assert {address for address, _ in vals} == {"/VMC/Ext/Blend/Val"}
    assert [args[0] for _, args in vals] == [*VMC_NAMES, *PRESETS]
    sent = {args[0]: args[1] for _, args in vals}
    assert {"EyeBlinkLeft", "JawOpen", "MouthSmileRight", "TongueOut"} <= set(sent)  # perfect-sync spelling
    for j, name in enumerate(VMC_NAMES):
        assert sent[name] == pytest.approx(float(f.weights[j]), abs=tolerance)
    presets = vrm_presets(f.weights)
    for name in PRESETS:
        assert sent[name] == pytest.approx(presets[name], abs=max(tolerance, 1e-6))
    assert apply == ("/VMC/Ext/Blend/Apply", ())


def test_vmc_frames_reach_a_python_osc_server(server, sink_to) -> None:
    port, received = server
    sink = sink_to(port, "vmc")
    for i in range(4):
        f = frame(i)
        sink.submit(f)  # one at a time: the threading server may reorder separate datagrams
        messages = [received.get(timeout=5) for _ in range(MESSAGES_PER_FRAME)]
        check_vmc_frame(messages, f, tolerance=0.0)
    assert received.empty() and sink.sent == 4


def test_vmc_frame_is_one_bundle_with_an_immediate_time_tag() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.bind(("127.0.0.1", 0))
        raw.settimeout(5)
        sink = OscSink("127.0.0.1", raw.getsockname()[1], "vmc")
        sink.open()
        f = frame(7)
        sink.submit(f)
        datagram = raw.recv(65536)
        sink.close()
    assert datagram[:8] == b"#bundle\x00" and datagram[8:16] == b"\x00" * 7 + b"\x01"
    bundle = OscBundle(datagram)
    check_vmc_frame([(m.address, tuple(m.params)) for m in bundle], f, tolerance=0.0)


def test_arkit_message_carries_index_time_and_52_weights(server, sink_to) -> None:
    port, received = server
    sink = sink_to(port, "arkit")
    frames = [frame(i, fps=60) for i in range(3, 8)]
    for f in frames:
        sink.submit(f)
    got = sorted((received.get(timeout=5) for _ in frames), key=lambda m: m[1][0])
    for f, (address, args) in zip(frames, got):
        assert address == "/emotalk/arkit" and len(args) == 2 + 52
        assert args[0] == f.index and isinstance(args[0], int)
        assert args[1] == pytest.approx(f.time, rel=1e-6)
        np.testing.assert_array_equal(np.array(args[2:], dtype=np.float32), f.weights)


def test_bad_setup_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown OSC format 'json': use vmc or arkit"):
        OscSink("127.0.0.1", 39539, "json")
    with pytest.raises(UserError, match=r"cannot resolve host 'no-such-host.invalid'.*--osc"):
        OscSink("no-such-host.invalid", 39539).open()


def _wait_until_bound(port: int, process: subprocess.Popen, timeout: float = 5.0) -> None:
    """oscdump prints nothing when ready; it is ready when its port can no longer be bound."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"oscdump exited: {process.stderr.read()}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return
        assert time.monotonic() < deadline, "oscdump did not bind its port"
        time.sleep(0.01)


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


# oscdump prints `<time tag> <path> <type tags> <args>`, e.g. `e.f /VMC/Ext/Blend/Val sf "JawOpen" 0.250000`.
OSCDUMP_LINE = re.compile(r'^\S+ (?P<path>/\S+) ?(?P<types>\S*) ?(?P<args>.*)$')
OSCDUMP_VAL = re.compile(r'^"(?P<name>[^"]*)" (?P<value>-?\d+\.\d+)$')


@pytest.mark.skipif(shutil.which("oscdump") is None,
                    reason="Debian's oscdump is not installed (apt install liblo-tools)")
def test_vmc_frames_reach_oscdump(sink_to) -> None:
    port = free_port()
    dump = subprocess.Popen(["oscdump", "-L", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(dump.stdout, lines), daemon=True).start()
    try:
        _wait_until_bound(port, dump)
        sink = sink_to(port, "vmc")
        frames = [frame(i) for i in range(3)]
        for f in frames:
            sink.submit(f)
        for f in frames:
            messages = []
            for _ in range(MESSAGES_PER_FRAME):
                line = OSCDUMP_LINE.match(lines.get(timeout=5).rstrip("\n"))
                assert line is not None
                if line["path"] == "/VMC/Ext/Blend/Val":
                    assert line["types"] == "sf"
                    val = OSCDUMP_VAL.match(line["args"])
                    assert val is not None, line["args"]
                    messages.append((line["path"], (val["name"], float(val["value"]))))
                else:
                    assert line["types"] == "" and line["args"] == ""
                    messages.append((line["path"], ()))
            check_vmc_frame(messages, f, tolerance=1e-6)  # oscdump prints 6 decimals
    finally:
        dump.terminate()
        dump.wait(timeout=5)
