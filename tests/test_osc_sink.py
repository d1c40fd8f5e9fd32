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
from pythonosc.osc_message import OscMessage
from pythonosc.osc_server import ThreadingOSCUDPServer

from emotalk_stream.streamer.cli import build_parser
from emotalk_stream.streamer.frames import OutFrame
from emotalk_stream.streamer.head_motion import Motion, Rotation
from emotalk_stream.streamer.launch import parse_outputs
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

    def make(port: int, fmt: str, **vmc: object) -> OscSink:
        sink = OscSink("127.0.0.1", port, fmt, **vmc)
        sink.open()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()


def check_vmc_frame(messages: list[tuple[str, tuple]], f: OutFrame, tolerance: float, shapes: str = "both") -> None:
    """The 52 perfect-sync values by name, then the 11 VRM presets (both, or the one set `shapes`
    names), then Apply, in that order."""
    names = [*(VMC_NAMES if shapes != "presets" else ()), *(PRESETS if shapes != "perfectsync" else ())]
    assert len(messages) == len(names) + 1
    vals, apply = messages[:-1], messages[-1]
    assert {address for address, _ in vals} == {"/VMC/Ext/Blend/Val"}
    assert [args[0] for _, args in vals] == names
    sent = {args[0]: args[1] for _, args in vals}
    if shapes != "presets":
        assert {"EyeBlinkLeft", "JawOpen", "MouthSmileRight", "TongueOut"} <= set(sent)  # perfect-sync spelling
        for j, name in enumerate(VMC_NAMES):
            assert sent[name] == pytest.approx(float(f.weights[j]), abs=tolerance)
    if shapes != "perfectsync":
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


@pytest.mark.parametrize("shapes, count", [("perfectsync", 52), ("presets", len(PRESETS))])
def test_vmc_shapes_choose_what_each_frame_carries(server, sink_to, shapes: str, count: int) -> None:
    port, received = server
    sink = sink_to(port, "vmc", shapes=shapes)
    for i in range(3):
        f = frame(i)
        sink.submit(f)
        check_vmc_frame([received.get(timeout=5) for _ in range(count + 1)], f, tolerance=0.0, shapes=shapes)
    time.sleep(0.1)
    assert received.empty(), "a frame carries nothing more"


@pytest.mark.parametrize("shapes", ["both", "presets"])
def test_unbundled_vmc_sends_each_message_in_a_datagram_of_its_own_apply_last(shapes: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.bind(("127.0.0.1", 0))
        raw.settimeout(5)
        sink = OscSink("127.0.0.1", raw.getsockname()[1], "vmc", shapes, bundled=False)
        sink.open()
        frames = [frame(i) for i in range(2)]
        for f in frames:
            sink.submit(f)
        per_frame = (52 if shapes == "both" else 0) + len(PRESETS) + 1
        datagrams = [raw.recv(65536) for _ in range(per_frame * len(frames))]
        sink.close()
    assert not any(d.startswith(b"#bundle") for d in datagrams)
    messages = [OscMessage(d) for d in datagrams]
    for k, f in enumerate(frames):
        chunk = messages[k * per_frame:(k + 1) * per_frame]
        check_vmc_frame([(m.address, tuple(m.params)) for m in chunk], f, tolerance=0.0, shapes=shapes)


def rotate(quaternion: tuple[float, ...], vector: tuple[float, float, float]) -> np.ndarray:
    """`vector` turned by a unit `quaternion` (x, y, z, w), the textbook rotation matrix."""
    x, y, z, w = quaternion
    matrix = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                       [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                       [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    return matrix @ np.array(vector)


def angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


@pytest.mark.parametrize("bundled", [True, False])
def test_vmc_frames_carry_the_head_bone_and_the_eyes_look_at_point(bundled: bool) -> None:
    """In Unity's axes (x to the right of an avatar facing +z, y up): turning to its own left moves
    its forward vector to -x, looking down to -y, tilting to its own right moves its up vector to +x."""
    poses = [Rotation(yaw=10.0), Rotation(pitch=10.0), Rotation(roll=10.0)]
    frames = [OutFrame(i, i / 30, 30, frame(i).weights, motion=Motion(head=pose, eyes=Rotation(pose.pitch, pose.yaw)))
              for i, pose in enumerate(poses)]
    frames += [OutFrame(3, 0.1, 30, frame(3).weights, motion=Motion(head=None, eyes=None)),  # both off: nothing
               OutFrame(4, 0.1, 30, frame(4).weights)]  # no motion computed: nothing
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.bind(("127.0.0.1", 0))
        raw.settimeout(5)
        sink = OscSink("127.0.0.1", raw.getsockname()[1], "vmc", "presets", bundled=bundled)
        sink.open()
        received = []
        for f in frames:
            sink.submit(f)
            if bundled:
                received.append([(m.address, tuple(m.params)) for m in OscBundle(raw.recv(65536))])
            else:
                count = len(PRESETS) + 1 + (2 if f.motion is not None and f.motion.head is not None else 0)
                received.append([(m.address, tuple(m.params)) for m in (OscMessage(raw.recv(65536))
                                                                       for _ in range(count))])
        sink.close()
    for f, messages in zip(frames, received):
        motion = [m for m in messages if m[0] in ("/VMC/Ext/Bone/Pos", "/VMC/Ext/Set/Eye")]
        check_vmc_frame([m for m in messages if m not in motion], f, tolerance=0.0, shapes="presets")
        if f.motion is None or f.motion.head is None:
            assert motion == []
            continue
        assert [address for address, _ in motion] == ["/VMC/Ext/Bone/Pos", "/VMC/Ext/Set/Eye"]
        assert messages[-1][0] == "/VMC/Ext/Blend/Apply", "Apply stays last"
        (_, bone), (_, eye) = motion
        assert bone[0] == "Head" and bone[1:4] == (0.0, 0.0, 0.0) and eye[0] == 1
        quaternion = bone[4:]
        assert np.linalg.norm(quaternion) == pytest.approx(1.0, abs=1e-6)
        forward, up = rotate(quaternion, (0, 0, 1)), rotate(quaternion, (0, 1, 0))
        look = np.array(eye[1:])
        assert np.linalg.norm(look) == pytest.approx(1.0, abs=1e-6)  # 1 m ahead of the head
        assert np.degrees(2 * np.arccos(abs(quaternion[3]))) == pytest.approx(10.0, abs=0.01)  # turned by 10 degrees
        pose = f.motion.head
        if pose.yaw:
            assert forward[0] < -0.17 and look[0] < -0.17 and angle(look, np.array([0, 0, 1])) == pytest.approx(10, abs=0.01)
        if pose.pitch:
            assert forward[1] < -0.17 and look[1] < -0.17 and angle(look, np.array([0, 0, 1])) == pytest.approx(10, abs=0.01)
        if pose.roll:
            assert up[0] > 0.17 and angle(forward, np.array([0, 0, 1])) == pytest.approx(0.0, abs=1e-3)


def test_vmc_options_without_a_vmc_output_are_refused() -> None:
    for argv in (["--vmc-shapes", "presets"], ["--vmc-unbundled"], ["--osc", "127.0.0.1:9000", "--osc-format",
                                                                    "arkit", "--vmc-shapes", "perfectsync"]):
        args = build_parser().parse_args(["--wav", "speech.wav", "--record", "face.npy", *argv])
        with pytest.raises(UserError, match=r"--vmc-shapes and --vmc-unbundled shape VMC output: add --osc"):
            parse_outputs(args)
    args = build_parser().parse_args(["--wav", "speech.wav", "--osc", "127.0.0.1:9000", "--vmc-shapes", "presets",
                                      "--vmc-unbundled"])
    [sink] = parse_outputs(args).sinks
    assert (sink.fmt, sink.shapes, sink.bundled) == ("vmc", "presets", False)


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
    with pytest.raises(UserError, match="unknown VMC shapes 'all': use both, perfectsync, presets"):
        OscSink("127.0.0.1", 39539, "vmc", "all")
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
