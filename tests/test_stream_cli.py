"""`emotalk-stream` end to end, as users run it, against real receivers on loopback."""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import ThreadingOSCUDPServer
from pythonosc.udp_client import SimpleUDPClient
from websockets.sync.client import ClientConnection, connect

from emotalk_stream.engine import Engine
from emotalk_stream.training.audio import read_audio
from emotalk_stream.training.blendshapes import INDEX, LIVELINK_UDP_ORDER, NAMES, REGIONS
from livelink_decoder import decode
from virtual_mic import virtual_microphone
from waiting import free_port, wait_for
from ws_peers import stalled_client

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "training" / "assets" / "sample.wav"
CLI = [sys.executable, "-m", "emotalk_stream.streamer.cli"]
RATE = 16000


def expected_frames(path: Path, fps: int) -> int:
    info = sf.info(str(path))
    return -(-info.frames * fps // info.samplerate)  # ceil(N x fps), as offline inference counts (16 kHz files)


def run(*args: str, env: dict[str, str] | None = None, data: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=data, capture_output=True, timeout=180, env=env)


class ArkitReceiver:
    """A python-osc server collecting `/emotalk/arkit` frames: (index, time, weights), and when each
    arrived (time.monotonic(), in `arrivals`)."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, float, np.ndarray]] = []
        self.arrivals: list[float] = []
        self._lock = threading.Lock()  # each datagram is handled on its own thread: keep the lists paired
        dispatcher = Dispatcher()
        dispatcher.map("/emotalk/arkit", self._received)
        self.server = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _received(self, _address: str, index: int, time_s: float, *weights: float) -> None:
        with self._lock:
            self.arrivals.append(time.monotonic())
            self.frames.append((index, time_s, np.array(weights, np.float32)))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = ArkitReceiver()
    yield r
    r.close()


def check_frames(frames: list[tuple[int, float, np.ndarray]], count: int, fps: int) -> np.ndarray:
    """`count` frames timed by the audio clock, then the neutral frame; returns the (count, 52) weights."""
    frames = sorted(frames, key=lambda f: f[0])
    assert [f[0] for f in frames] == list(range(count + 1))
    assert all(abs(t - i / fps) < 1e-5 for i, t, _ in frames)
    assert not frames[-1][2].any(), "the last frame is the neutral face"
    return np.stack([w for _, _, w in frames[:count]])


@pytest.mark.parametrize("fps", [30, 60])
def test_wav_to_python_osc_gives_exactly_ceil_n_fps_frames_equal_to_the_engine(receiver: ArkitReceiver, fps: int) -> None:
    done = run("--wav", str(SAMPLE), "--no-pace", "--osc", f"127.0.0.1:{receiver.port}", "--osc-format", "arkit",
               "--fps", str(fps), "--no-blink", "--quiet")
    assert done.returncode == 0, done.stderr.decode()
    count = expected_frames(SAMPLE, fps)
    wait_for(lambda: len(receiver.frames) >= count + 1, what="every frame")
    weights = check_frames(receiver.frames, count, fps)
    engine_frames = Engine.load("default").process([read_audio(SAMPLE)])[0]
    model = engine_frames[:(count + 1) // 2 if fps == 60 else count]
    if fps == 30:
        np.testing.assert_allclose(weights, model, atol=1e-5)
    else:
        np.testing.assert_allclose(weights[0::2], model[:len(weights[0::2])], atol=1e-5)
        np.testing.assert_allclose(weights[1:-1:2], (model[:-1] + model[1:])[:len(weights[1:-1:2])] / 2, atol=1e-5)


def test_vmc_bundles_reach_debians_oscdump() -> None:
    if not Path("/usr/bin/oscdump").exists():
        pytest.skip("oscdump not installed (apt install liblo-tools)")
    port = free_port()
    dump = subprocess.Popen(["oscdump", "-L", str(port)], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []  # read all the time: a full pipe would stall oscdump and lose datagrams
    threading.Thread(target=lambda: lines.extend(iter(dump.stdout.readline, "")), daemon=True).start()
    try:
        time.sleep(0.3)  # oscdump binds before its first line; give it a moment on a busy machine
        done = run("--wav", str(SAMPLE), "--no-pace", "--osc", f"127.0.0.1:{port}", "--quiet")
        assert done.returncode == 0, done.stderr.decode()
        count = expected_frames(SAMPLE, 30)
        wait_for(lambda: sum("/VMC/Ext/Blend/Apply" in line for line in lines) >= count + 1, timeout=20, what="Apply")
    finally:
        dump.kill()
        dump.wait()
    values = [line for line in lines if "/VMC/Ext/Blend/Val" in line]
    assert len(values) == 63 * (count + 1)
    names = {re.search(r'"(\w+)"', line).group(1) for line in values}
    assert {"JawOpen", "EyeBlinkLeft", "TongueOut", "A", "Blink_L", "Joy", "Fun"} <= names
    jaw = [float(line.split()[-1]) for line in values if '"JawOpen"' in line]
    assert max(jaw) > 0.2 and jaw[-1] == 0.0  # the voice opens the mouth (peak 0.30 past the rest face); the stop closes it


def test_livelink_packets_decode_with_frame_numbers_at_the_output_rate() -> None:
    count = expected_frames(SAMPLE, 60)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        datagrams: list[bytes] = []  # received while the command runs: a socket buffer holds ~200
        reader = threading.Thread(target=lambda: datagrams.extend(sock.recv(2048) for _ in range(count + 1)))
        reader.start()
        done = run("--wav", str(SAMPLE), "--no-pace", "--livelink", f"127.0.0.1:{sock.getsockname()[1]}",
                   "--subject", "Anna", "--fps", "60", "--quiet")
        assert done.returncode == 0, done.stderr.decode()
        reader.join(10)
    packets = [decode(datagram) for datagram in datagrams]
    assert [p["frame"] for p in packets] == list(range(count + 1))
    assert {(p["version"], p["subject"], p["rate"], p["count"]) for p in packets} == {(6, "Anna", (60, 1), 61)}
    jaw = np.array([p["values"][LIVELINK_UDP_ORDER.index("JawOpen")] for p in packets])
    assert jaw.max() > 0.2 and jaw[-1] == 0.0


def test_stdin_pcm_at_48k_is_resampled_and_recorded(tmp_path: Path) -> None:
    audio, rate = sf.read(str(SAMPLE), dtype="float32")
    import torch
    from torchaudio.functional import resample
    pcm48 = resample(torch.from_numpy(audio), rate, 48000).numpy()
    data = (np.clip(pcm48, -1, 1) * 32767).astype("<i2").tobytes()
    out = tmp_path / "face.npy"
    done = run("--stdin", "--stdin-rate", "48000", "--record", str(out), "--quiet", data=data)
    assert done.returncode == 0, done.stderr.decode()
    recorded = np.load(out)
    at_16k = (2 * len(pcm48) * 16000 + 48000) // (2 * 48000)  # the resampled length, half up
    assert recorded.shape == (-(-at_16k * 30 // 16000), 52)
    assert recorded[:, INDEX["jawOpen"]].max() > 0.2


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(process: subprocess.Popen, timeout: float = 60) -> str:
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return err


def connect_when_up(port: int, process: subprocess.Popen, timeout: float) -> ClientConnection:
    """A WebSocket client of the stream `process` serves on `port`, once it answers there."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect(f"ws://127.0.0.1:{port}/ws", open_timeout=2)
        except OSError:
            assert time.monotonic() < deadline and process.poll() is None, "the server never came up"
            time.sleep(0.1)


def test_websocket_clients_get_json_frames_and_send_controls() -> None:
    port = free_port(socket.SOCK_STREAM)
    process = start("--wav", str(SAMPLE), "--ws", f"127.0.0.1:{port}", "--no-blink")
    try:
        with connect_when_up(port, process, timeout=30) as client:
            frames = [json.loads(client.recv(timeout=10)) for _ in range(20)]
            client.send(json.dumps({"gain": {region: 0.0 for region in ("jaw", "mouth")}}))
            reply = None
            after = []
            while True:
                message = json.loads(client.recv(timeout=10))
                if "frame" not in message:
                    reply = message
                elif reply is not None:
                    after.append(message)
                if message.get("final"):
                    break
    finally:
        err = finish(process)
    assert process.returncode == 0, err
    assert set(frames[0]) >= {"frame", "time", "weights"} and set(frames[0]["weights"]) == set(NAMES)
    assert [f["frame"] for f in frames] == list(range(frames[0]["frame"], frames[0]["frame"] + 20))
    assert reply == {"ok": True}
    lips = [name for region in ("jaw", "mouth") for name in (NAMES[i] for i in REGIONS[region])]
    assert len(after) > 30 and all(f["weights"][name] == 0.0 for f in after[5:] for name in lips)
    assert after[-1]["final"] is True


def test_osc_controls_change_the_face_mid_stream_and_bad_ones_are_refused(receiver: ArkitReceiver) -> None:
    control = free_port()
    process = start("--wav", str(SAMPLE), "--osc", f"127.0.0.1:{receiver.port}", "--osc-format", "arkit",
                    "--control", f"127.0.0.1:{control}", "--no-blink")
    try:
        wait_for(lambda: len(receiver.frames) >= 30, timeout=30, what="30 frames")
        client = SimpleUDPClient("127.0.0.1", control)
        client.send_message("/emotalk/level", 9.0)  # refused
        client.send_message("/emotalk/gain", ["jaw", 0.0])
        client.send_message("/emotalk/gain", ["mouth", 0.0])
        wait_for(lambda: len(receiver.frames) >= 60, timeout=30, what="60 frames")
        changed_at = len(receiver.frames)
    finally:
        err = finish(process)
    assert process.returncode == 0, err
    assert "refused" in err and "level" in err
    weights = check_frames(receiver.frames, expected_frames(SAMPLE, 30), 30)
    lips = [i for region in ("jaw", "mouth") for i in REGIONS[region]]
    assert weights[:30, INDEX["jawOpen"]].max() > 0.1  # clearly open before (shut is below 0.05) ...
    assert not weights[changed_at:, lips].any()  # ... and shut by the gains


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_within_a_second_with_a_neutral_frame(receiver: ArkitReceiver, how: signal.Signals) -> None:
    process = start("--wav", str(SAMPLE), "--osc", f"127.0.0.1:{receiver.port}", "--osc-format", "arkit")
    try:
        wait_for(lambda: len(receiver.frames) >= 30, timeout=30, what="30 frames")
        signalled = time.monotonic()
        process.send_signal(how)
        err = finish(process, timeout=5)
    finally:
        process.kill()
    assert process.returncode == 0, err
    wait_for(lambda: any(not w.any() for _, _, w in receiver.frames), what="the neutral frame")
    # What the avatar shows: the face at rest within a second of the signal (the interpreter's own
    # exit afterwards is not part of it, and is bounded by finish's timeout above).
    rested = next(t for t, (_, _, w) in zip(receiver.arrivals, receiver.frames) if not w.any())
    assert rested - signalled < 1.0
    frames = sorted(receiver.frames, key=lambda f: f[0])
    assert not frames[-1][2].any() and frames[-1][0] == len(frames) - 1
    assert len(frames) < expected_frames(SAMPLE, 30)


def test_microphone_through_a_pulseaudio_virtual_mic(receiver: ArkitReceiver, tmp_path: Path) -> None:
    with virtual_microphone() as mic:
        listed = run("--list-devices", env=mic.env)
        assert listed.returncode == 0 and "default" in listed.stdout.decode()
        process = start("--mic", "default", "--osc", f"127.0.0.1:{receiver.port}", "--osc-format", "arkit",
                        "--record", str(tmp_path / "mic.npy"), "--no-blink", env=mic.env)
        try:
            wait_for(lambda: len(receiver.frames) >= 15, timeout=30, what="frames of room silence")
            quiet = len(receiver.frames)
            mic.play(SAMPLE).wait(timeout=30)
            wait_for(lambda: len(receiver.frames) >= quiet + 5 * 30, timeout=10, what="the speech's frames")
            process.send_signal(signal.SIGINT)
            err = finish(process, timeout=10)
        finally:
            process.kill()
    assert process.returncode == 0, err
    frames = sorted(receiver.frames, key=lambda f: f[0])
    assert [f[0] for f in frames] == list(range(len(frames)))
    jaw = np.array([w[INDEX["jawOpen"]] for _, _, w in frames])
    assert jaw[quiet:].max() > 0.2  # the voice opens the mouth
    recorded = np.load(tmp_path / "mic.npy")
    assert len(recorded) == len(frames) - 1  # every frame but the neutral one
    status = [line for line in err.splitlines() if "fps |" in line]
    assert status and re.search(r"\d+ fps \| latency \d+/\d+ ms \| -?\d+ dBFS \| emotion calm", err), err
    assert re.search(r"stopped: \d+ frames", err)


def bad_wav(tmp_path: Path) -> str:
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage that is no audio")
    return str(path)


@pytest.mark.parametrize("case, args, message", [
    ("no such device", ["--mic", "no-such-microphone-xyz", "--osc", "127.0.0.1:9000"], r"no-such-microphone-xyz.*--list-devices"),
    ("unreadable wav", ["--wav", "BROKEN", "--osc", "127.0.0.1:9000"], r"cannot read .*broken\.wav"),
    ("missing wav", ["--wav", "/nonexistent/speech.wav", "--osc", "127.0.0.1:9000"], r"does not exist"),
    ("bad address", ["--wav", str(SAMPLE), "--osc", "127.0.0.1"], r"--osc '127\.0\.0\.1' is not HOST:PORT"),
    ("bad port", ["--wav", str(SAMPLE), "--livelink", "localhost:99999"], r"--livelink .*port must be"),
    ("ws port in use", ["--wav", str(SAMPLE), "--ws", "127.0.0.1:BUSY_TCP"], r"port \d+ is in use"),
    ("control port in use", ["--wav", str(SAMPLE), "--osc", "127.0.0.1:9000", "--control", "127.0.0.1:BUSY_UDP"],
     r"port \d+ is in use"),
    ("no output", ["--wav", str(SAMPLE)], r"nothing to send to"),
    ("no source", ["--osc", "127.0.0.1:9000"], r"no audio source"),
    ("bad gain", ["--wav", str(SAMPLE), "--osc", "127.0.0.1:9000", "--gain", "nose=2"], r"unknown face region 'nose'"),
    ("bad emotion", ["--wav", str(SAMPLE), "--osc", "127.0.0.1:9000", "--emotion", "ecstatic"], r"unknown emotion"),
    ("bad record", ["--wav", str(SAMPLE), "--record", "face.mp4"], r"\.csv .*\.npy"),
    ("look-ahead of an artifact", ["--wav", str(SAMPLE), "--engine", "runs/x", "--lookahead-ms", "0", "--osc",
                                   "127.0.0.1:9000"], r"--lookahead-ms is for a checkpoint"),
])
def test_bad_input_gets_one_clear_line_and_exit_2(tmp_path: Path, case: str, args: list[str], message: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        args = [a.replace("BROKEN", bad_wav(tmp_path)).replace("BUSY_TCP", str(tcp.getsockname()[1]))
                .replace("BUSY_UDP", str(udp.getsockname()[1])) for a in args]
        done = run(*args, "--quiet")
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 2, (case, lines)
    assert len(lines) == 1 and lines[0].startswith("emotalk-stream: error: "), (case, lines)
    assert re.search(message, lines[0]), (case, lines)
    assert "Traceback" not in done.stderr.decode()


def test_a_lost_microphone_rests_the_face_and_streams_again_when_it_returns(receiver: ArkitReceiver) -> None:
    with virtual_microphone() as mic:
        process = start("--mic", "default", "--osc", f"127.0.0.1:{receiver.port}", "--osc-format", "arkit",
                        "--no-blink", env=mic.env)
        try:
            wait_for(lambda: len(receiver.frames) >= 15, timeout=30, what="frames of room silence")
            mic.unload_source()
            wait_for(lambda: any(not w.any() for _, _, w in receiver.frames), timeout=10, what="a neutral face")
            resting = len(receiver.frames)
            mic.load_source()
            mic.play(SAMPLE).wait(timeout=30)
            wait_for(lambda: max((w[INDEX["jawOpen"]] for _, _, w in receiver.frames[resting:]), default=0) > 0.2,
                     timeout=15, what="the voice after the microphone returned")
            process.send_signal(signal.SIGINT)
            err = finish(process, timeout=10)
        finally:
            process.kill()
    assert process.returncode == 0, err
    assert re.search(r"warning: microphone .* stopped: .*neutral face until it is back", err), err
    assert "the microphone is back" in err


def test_exit_on_device_loss_stops_cleanly_with_one_line(receiver: ArkitReceiver) -> None:
    with virtual_microphone() as mic:
        process = start("--mic", "default", "--osc", f"127.0.0.1:{receiver.port}", "--osc-format", "arkit",
                        "--exit-on-device-loss", "--quiet", env=mic.env)
        try:
            wait_for(lambda: len(receiver.frames) >= 15, timeout=30, what="frames of room silence")
            mic.unload_source()
            err = finish(process, timeout=15)
        finally:
            process.kill()
    assert process.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.match(r"emotalk-stream: error: microphone .* stopped: .*--exit-on-device-loss", lines[0])
    wait_for(lambda: not receiver.frames[-1][2].any(), what="the neutral frame")


def test_a_receiver_that_is_down_is_reported_once_and_the_others_get_every_frame(receiver: ArkitReceiver) -> None:
    down = free_port()  # nothing listens: Linux answers every other datagram with port unreachable
    done = run("--wav", str(SAMPLE), "--no-pace", "--osc", f"127.0.0.1:{down}", "--livelink", f"127.0.0.1:{down}",
               "--osc", f"127.0.0.1:{receiver.port}", "--osc-format", "vmc", "--osc-format", "arkit")
    err = done.stderr.decode()
    assert done.returncode == 0, err
    count = expected_frames(SAMPLE, 30)
    wait_for(lambda: len(receiver.frames) >= count + 1, what="every frame at the healthy receiver")
    check_frames(receiver.frames, count, 30)
    for name in (f"osc 127.0.0.1:{down}", f"livelink 127.0.0.1:{down}"):
        assert err.count(f"warning: {name}: send failed") == 1, err
    # The summary names each failing receiver and its count.
    assert re.search(rf"send errors \d+ to osc 127\.0\.0\.1:{down}, \d+ to livelink 127\.0\.0\.1:{down}$", err.strip()), err


def test_a_second_ctrl_c_exits_at_once_and_every_port_is_free_after_a_stop(receiver: ArkitReceiver) -> None:
    ws, control = free_port(socket.SOCK_STREAM), free_port()
    process = start("--wav", str(SAMPLE), "--osc", f"127.0.0.1:{receiver.port}", "--osc-format", "arkit",
                    "--ws", str(ws), "--control", str(control))
    try:
        wait_for(lambda: len(receiver.frames) >= 15, timeout=30, what="frames")
        process.send_signal(signal.SIGINT)
        err = finish(process, timeout=5)
    finally:
        process.kill()
    assert process.returncode == 0, err
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", ws))  # the ports were released
        udp.bind(("127.0.0.1", control))
    ws = free_port(socket.SOCK_STREAM)
    process = start("--wav", str(SAMPLE), "--osc", f"127.0.0.1:{receiver.port}", "--osc-format", "arkit",
                    "--ws", str(ws))
    try:
        wait_for(lambda: len(receiver.frames) >= 45, timeout=30, what="frames of the second run")
        with stalled_client(ws):  # a client that never reads: a clean stop waits for it a while
            process.send_signal(signal.SIGINT)
            time.sleep(0.1)
            process.send_signal(signal.SIGINT)  # impatient: the second one does not wait
            signalled = time.monotonic()
            process.wait(timeout=5)
    finally:
        process.kill()
    assert process.returncode == 130 and time.monotonic() - signalled < 1.0


def test_stdin_that_is_a_terminal_is_refused_in_one_line(tmp_path: Path) -> None:
    controller, terminal = os.openpty()
    os.write(controller, b"\x04")  # Ctrl-D: were the terminal read, its input would end (a failure, not a hang)
    try:
        done = subprocess.run([*CLI, "--stdin", "--record", str(tmp_path / "face.npy")], stdin=terminal,
                              capture_output=True, timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, lines
    assert re.match(r"emotalk-stream: error: --stdin reads raw PCM from a pipe, but standard input is a terminal: "
                    r"pipe audio into it, e\.g\. ffmpeg .* \| emotalk-stream --stdin", lines[0]), lines
    assert not (tmp_path / "face.npy").exists()


class StderrLines:
    """A child's stderr, read all the time on a thread (a full pipe would stall it)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(iter(process.stderr.readline, "")), daemon=True)
        self._thread.start()

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)


def test_ctrl_c_while_stdin_waits_on_an_idle_pipe_stops_cleanly(tmp_path: Path) -> None:
    """The writer sent a second of audio and keeps the pipe open, silent: the reader thread waits in
    a read when Ctrl-C comes, which used to abort the interpreter (`Fatal Python error:
    _enter_buffered_busy`, exit code 134)."""
    out = tmp_path / "face.npy"
    process = subprocess.Popen([*CLI, "--stdin", "--record", str(out)], stdin=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    err = StderrLines(process)
    try:
        process.stdin.buffer.write((read_audio(SAMPLE)[:RATE] * 32767).astype("<i2").tobytes())
        process.stdin.flush()
        wait_for(lambda: any("(Ctrl-C stops)" in line for line in err.lines), timeout=60, what="the stream")
        time.sleep(1.0)  # the second is streamed: the pipe is idle now
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
    finally:
        process.kill()
        process.stdin.close()
    text = err.text()
    assert process.returncode == 0, text
    assert "Fatal Python error" not in text and "Traceback" not in text, text
    assert re.search(r"stopped: \d+ frames for 1\.00 s of audio", text), text
    assert np.load(out).shape[1] == 52


def test_a_file_piped_in_faster_than_real_time_gets_no_latency_figure_and_the_reason(tmp_path: Path) -> None:
    """Its audio waits in the input queue behind the audio before it, so sound-to-packet time is a
    backlog growing with the file (it read 5000 ms, the histogram's ceiling), not a latency."""
    audio = np.tile(read_audio(SAMPLE), 2)
    done = run("--stdin", "--record", str(tmp_path / "face.npy"),
               data=(np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert re.search(r"end of input: \d+ frames for 10\.01 s of audio, latency not measured \(the input came "
                     r"faster than real time and waited in a queue\), 0 dropped", err), err
    assert "latency p50" not in err


class Terminal:
    """A pseudo-terminal COLUMNS wide for a child's stdout and stderr; keeps everything written to it."""

    def __init__(self, columns: int) -> None:
        self.controller, self.terminal = os.openpty()
        fcntl.ioctl(self.terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        self.raw = bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.controller, 4096)
            except OSError:  # EIO: every writer closed its end
                return
            if not data:
                return
            self.raw += data

    def text(self) -> str:
        return self.raw.decode(errors="replace")

    def close(self) -> str:
        """What was written; the child must have exited."""
        os.close(self.terminal)
        self._thread.join(timeout=10)
        os.close(self.controller)
        return self.text()


def screen(text: str) -> list[str]:
    """The lines a terminal shows for `text`: a carriage return goes back to the line's start and
    ESC [ K erases to its end (all the console writes)."""
    lines = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line, column = "", 0
        for part in re.split(r"(\r|\x1b\[K)", raw):
            if part == "\r":
                column = 0
            elif part == "\x1b[K":
                line = line[:column]
            else:
                line = line[:column] + part + line[column + len(part):]
                column += len(part)
        lines.append(line)
    return lines


def test_the_status_line_fits_80_columns_shows_clients_and_the_emotion_and_is_gone_after_ctrl_c() -> None:
    port = free_port(socket.SOCK_STREAM)
    terminal = Terminal(80)
    process = subprocess.Popen([*CLI, "--wav", str(SAMPLE), "--ws", str(port), "--wait-for-client", "--emotion", "auto"],
                               stdin=subprocess.DEVNULL, stdout=terminal.terminal, stderr=terminal.terminal)
    try:
        with connect_when_up(port, process, timeout=60) as client:
            threading.Thread(target=lambda: [None for _ in client], daemon=True).start()  # reads every frame
            # The detected emotion, then the one a control sets.
            wait_for(lambda: re.search(r"emotion \w+ \(voice\) \| 1 client", terminal.text()), timeout=10,
                     what="a status line with the voice's emotion and one client")
            client.send(json.dumps({"emotion": "sad:0.8"}))
            wait_for(lambda: "emotion sad:0.8 | 1 client" in terminal.text(), timeout=5, what="the emotion set")
            process.send_signal(signal.SIGINT)
            process.wait(timeout=10)
    finally:
        process.kill()
        text = terminal.close()
    assert process.returncode == 0, text
    drawn = [part for part in re.split(r"\r\x1b\[K|\r?\n", text) if " fps | " in part]
    assert len(drawn) >= 2 and all(len(status) < 80 for status in drawn), drawn
    assert any(re.fullmatch(r"\d+ fps \| latency \d+/\d+ ms \| -?\d+ dBFS \| emotion sad:0\.8 \| 1 client", status)
               for status in drawn), drawn
    shown = screen(text)
    # The status line is erased at the stop: the summary is the last line, no stale status after it.
    assert not any(" fps | " in line for line in shown), shown
    assert re.match(r"emotalk-stream: stopped: \d+ frames", [line for line in shown if line][-1]), shown
