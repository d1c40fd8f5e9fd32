"""Bad input, one table: every case is what a user or a peer can send, and what they get back.

Commands run in-process (`emotalk-stream` is `cli.main`): a refusal is exit code 2 and exactly one
stderr line `emotalk-stream: error: ...`; input that must work streams every frame, ceil(N x 30)
for N seconds of input at 16 kHz (as offline inference counts), all finite and in [0, 1]. Controls go through a real ControlBoard behind a
real OSC server or WebSocket sink: refused with a reason, the board unchanged, the stream going on.
Cases covered elsewhere are not repeated here (see the table in docs/reliability.md): e.g. a missing or corrupt
WAV end to end in test_stream_cli.py, a tampered model.onnx in test_engine.py.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import socket
import struct
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pythonosc.osc_message_builder import build_msg
from websockets.sync.client import connect

from emotalk_stream.engine.artifact import ARTIFACT_FORMAT, ARTIFACT_VERSION, MANIFEST_FILE, ONNX_FILE
from emotalk_stream.streamer.cli import main
from emotalk_stream.streamer.controls import ControlBoard
from emotalk_stream.streamer.frames import OutFrame
from emotalk_stream.streamer.osc_control import OscControlServer
from emotalk_stream.streamer.websocket_sink import WebSocketSink
from emotalk_stream.training.blendshapes import COUNT
from emotalk_stream.training.model_files import CONFIG_FILE, DEFAULT_MODEL, WEIGHTS_FILE
from waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "training" / "assets" / "sample.wav"
FPS = 30
PREFIX = "emotalk-stream: error: "


@dataclass
class Env:
    """What a case may use: a folder of its own, the captured output, a fresh board."""

    tmp: Path
    capsys: pytest.CaptureFixture[str]
    caplog: pytest.LogCaptureFixture
    monkeypatch: pytest.MonkeyPatch
    board: ControlBoard


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    gets: str  # what the user gets, for the table in docs/reliability.md
    check: Callable[[Env], None]

    def __str__(self) -> str:
        return f"{self.group}: {self.name}"


# ---------------------------------------------------------------- commands

def run_command(env: Env, args: list[str], stdin: bytes | None = None) -> tuple[int, str]:
    """`emotalk-stream ARGS --quiet` in-process: (exit code, stderr)."""
    if stdin is not None:
        env.monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(stdin)))
    code = main([*args, "--quiet"])
    return code, env.capsys.readouterr().err


def refused(env: Env, args: list[str], message: str) -> None:
    """Exit code 2 and one line naming the problem, no traceback."""
    code, err = run_command(env, args)
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    assert re.search(message, lines[0]), lines[0]


def streams_every_frame(env: Env, source: list[str], samples: int, rate: int, stdin: bytes | None = None) -> None:
    """Exit 0, nothing on stderr, ceil(N x 30) frames for the N seconds the 16 kHz stream holds
    (samples resampled to the nearest 16 kHz sample, half up), all in [0, 1]."""
    code, err = run_command(env, [*source, "--no-pace", "--record", str(env.tmp / "face.npy")], stdin)
    assert (code, err) == (0, "")
    frames = np.load(env.tmp / "face.npy")
    at_16k = math.floor(Fraction(samples * 16000, rate) + Fraction(1, 2))
    assert frames.shape == (math.ceil(Fraction(at_16k * FPS, 16000)), COUNT)
    assert np.isfinite(frames).all() and frames.min() >= 0.0 and frames.max() <= 1.0


def command(args: list[str], message: str) -> Callable[[Env], None]:
    """A bad option on an otherwise good command line."""
    def check(env: Env) -> None:
        refused(env, ["--wav", str(SAMPLE), "--no-pace", "--record", str(env.tmp / "face.npy"),
                      *[a.replace("TMP", str(env.tmp)) for a in args]], message)
    return check


# ---------------------------------------------------------------- files

def wav_bytes(rate: int = 16000, channels: int = 1, samples: int = 1600) -> bytes:
    noise = np.random.default_rng(rate + channels).normal(0.0, 0.1, (samples, channels))
    buffer = io.BytesIO()
    sf.write(buffer, noise, rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def patched(offset: int, fmt: str, value: int) -> bytes:
    """A valid mono 16 kHz WAV with one header field changed (22: channels, 24: rate)."""
    data = bytearray(wav_bytes())
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


def unreadable(path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path.write_bytes(wav_bytes())
    path.chmod(0)


def bad_file(make: Callable[[Path], object], message: str) -> Callable[[Env], None]:
    """`make(path)` writes the file (bytes: its content)."""
    def check(env: Env) -> None:
        path = env.tmp / "speech.wav"
        content = make(path)
        if isinstance(content, bytes):
            path.write_bytes(content)
        refused(env, ["--wav", str(path), "--no-pace", "--record", str(env.tmp / "face.npy")], message)
    return check


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02\x00\x00\x00" + bytes(200)


# ---------------------------------------------------------------- rates, channels, samples

def just_over_18_frames(rate: int) -> int:
    """Samples at `rate` lasting 18 frames and less than half a 16 kHz sample more (the finest the
    16 kHz stream tells apart): the count must be 18, where a resampled length rounded up gives 19."""
    return int((Fraction(18, FPS) + Fraction(1, 40000)) * rate)


def wav_works(rate: int, channels: int = 1) -> Callable[[Env], None]:
    def check(env: Env) -> None:
        samples = just_over_18_frames(rate)
        path = env.tmp / "speech.wav"
        path.write_bytes(wav_bytes(rate, channels, samples))
        streams_every_frame(env, ["--wav", str(path)], samples, rate)
    return check


def pcm(audio: np.ndarray, fmt: str) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes() if fmt == "s16le" else audio.astype("<f4").tobytes()


def stdin_works(rate: int, channels: int, fmt: str) -> Callable[[Env], None]:
    def check(env: Env) -> None:
        samples = just_over_18_frames(rate)
        audio = np.random.default_rng(rate).normal(0.0, 0.1, (samples, channels))
        streams_every_frame(env, ["--stdin", "--stdin-rate", str(rate), "--stdin-channels", str(channels),
                                  "--stdin-format", fmt], samples, rate, pcm(audio, fmt))
    return check


def stdin_at_a_terminal(env: Env) -> None:
    """Standard input is a real terminal (a pseudo-terminal), as when --stdin is typed at a prompt
    without a pipe: refused at once rather than waiting silently at 0 fps."""
    controller, terminal = os.openpty()
    os.write(controller, b"\x04")  # Ctrl-D: were the terminal read, its input would end (a failure, not a hang)
    try:
        with open(terminal, "rb") as stdin:
            env.monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stdin))
            refused(env, ["--stdin", "--record", "face.npy"],
                    r"--stdin reads raw PCM from a pipe, but standard input is a terminal: pipe audio into it, "
                    r"e\.g\. ffmpeg .* \| emotalk-stream --stdin")
    finally:
        os.close(controller)


def record_into_a_missing_folder(env: Env) -> None:
    """Refused, and the folder is not made: a typo in its name must not grow a new tree."""
    command(["--record", "TMP/no-such-folder/take.csv"],
            r"cannot record to .*take\.csv: the folder .*no-such-folder does not exist; create it first")(env)
    assert not (env.tmp / "no-such-folder").exists()


def stdin_with(values: tuple[float, ...]) -> Callable[[Env], None]:
    """One second of f32le speech-level noise with runs of `values` in it."""
    def check(env: Env) -> None:
        audio = np.random.default_rng(0).normal(0.0, 0.1, 16000).astype(np.float32)
        for i, value in enumerate(values):
            audio[2000 + 3000 * i:2000 + 3000 * i + 800] = value
        streams_every_frame(env, ["--stdin", "--stdin-format", "f32le"], 16000, 16000, pcm(audio, "f32le"))
    return check


# ---------------------------------------------------------------- controls

def osc_refused(datagram: bytes, reason: str) -> Callable[[Env], None]:
    """Sent to a real OSC control server: refused with `reason`, board unchanged, still serving."""
    def check(env: Env) -> None:
        server = OscControlServer("127.0.0.1", 0, env.board)
        server.open()
        try:
            before = env.board.current
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(datagram, server.address)
                wait_for(lambda: any(re.search(reason, r.getMessage()) for r in env.caplog.records),
                         f"a refusal saying {reason!r}")
                assert env.board.current == before and (env.board.accepted, env.board.refused) == (0, 1)
                sock.sendto(build_msg("/emotalk/person", [3]).dgram, server.address)
                wait_for(lambda: env.board.current[0].person == 3, "a valid control after it")
        finally:
            server.close()
    return check


def bundle(*elements: bytes) -> bytes:
    return b"#bundle\0" + (1).to_bytes(8, "big") + b"".join(len(e).to_bytes(4, "big") + e for e in elements)


def osc(address: str, *args: object) -> bytes:
    return build_msg(address, list(args)).dgram


def ws_refused(message: str, reason: str) -> Callable[[Env], None]:
    """Sent by one of two WebSocket clients: an error reply with `reason`, board unchanged, and both
    clients still get every frame."""
    def check(env: Env) -> None:
        sink = WebSocketSink("127.0.0.1", 0, env.board)
        sink.open()
        try:
            url = f"ws://127.0.0.1:{sink.port}/ws"
            with connect(url, open_timeout=5) as rude, connect(url, open_timeout=5) as polite:
                wait_for(lambda: sink.clients == 2, "two clients")
                before = env.board.current
                rude.send(message)
                reply = json.loads(rude.recv(timeout=5))
                assert set(reply) == {"error"} and re.search(reason, reply["error"]), reply
                assert env.board.current == before
                for index in range(10):
                    sink.submit(OutFrame(index, index / FPS, FPS, np.zeros(COUNT, np.float32)))
                    assert [json.loads(c.recv(timeout=5))["frame"] for c in (polite, rude)] == [index, index]
        finally:
            sink.close()
    return check


# ---------------------------------------------------------------- checkpoints and artifacts

def checkpoint_of_another_size(folder: Path) -> None:
    shutil.copytree(DEFAULT_MODEL, folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["content"]["hidden"] *= 2
    (folder / CONFIG_FILE).write_text(json.dumps(config))


def manifest(folder: Path, **fields: object) -> None:
    folder.mkdir()
    (folder / MANIFEST_FILE).write_text(json.dumps({"format": ARTIFACT_FORMAT, **fields}))


def changed_onnx_hash(folder: Path) -> None:
    """A complete manifest whose model.onnx is not the file it hashed."""
    manifest(folder, format_version=ARTIFACT_VERSION, model=json.loads((DEFAULT_MODEL / CONFIG_FILE).read_text()),
             source_sha256="0" * 64, hop_ms=20, lookahead_ms=40, interface={}, backend="onnx",
             files={ONNX_FILE: "0" * 64})
    (folder / ONNX_FILE).write_bytes(b"an ONNX model from another export")


def folder_flag(flag: str, make: Callable[[Path], None], message: str) -> Callable[[Env], None]:
    def check(env: Env) -> None:
        make(env.tmp / "model")
        command([flag, "TMP/model"], message)(env)
    return check


def not_a_checkpoint(folder: Path) -> None:
    folder.mkdir()
    (folder / "notes.txt").write_text("a folder, but no model")


def manifest_not_json(folder: Path) -> None:
    folder.mkdir()
    (folder / MANIFEST_FILE).write_text("{")


EXACT = "streams exactly ceil(N x 30) frames, all in [0, 1]"
CASES = [
    # files: one line, exit 2
    Case("file", "empty", "`audio file F is empty (0 bytes)`", bad_file(lambda p: b"", r"is empty \(0 bytes\)")),
    Case("file", "truncated data chunk", "`audio file F is truncated: its header promises N bytes ...`",
         bad_file(lambda p: wav_bytes()[:1000], r"is truncated: its header promises 3200 bytes")),
    Case("file", "PNG renamed .wav", "`cannot read F as audio (...)`", bad_file(lambda p: PNG, r"cannot read .* as audio")),
    Case("file", "text renamed .wav", "`cannot read F as audio (...)`",
         bad_file(lambda p: b"hello, this is not audio\n" * 40, r"cannot read .* as audio")),
    Case("file", "a folder", "`F is a folder, not an audio file`", bad_file(lambda p: p.mkdir(), r"is a folder")),
    Case("file", "unreadable permissions", "`cannot open audio file F (Permission denied): check its permissions`",
         bad_file(unreadable, r"Permission denied.*permissions")),
    Case("file", "0 channels in the header", "`cannot read F as audio (...)`",
         bad_file(lambda p: patched(22, "<H", 0), r"cannot read .* as audio")),
    Case("file", "22051 Hz in the header", "`audio file F has a sample rate of 22051 Hz, not a standard one ...`",
         bad_file(lambda p: patched(24, "<I", 22051), r"sample rate of 22051 Hz.*ffmpeg")),
    Case("file", "4 Hz in the header", "`audio file F has a sample rate of 4 Hz, not a standard one ...`",
         bad_file(lambda p: patched(24, "<I", 4), r"sample rate of 4 Hz")),
    Case("file", "no samples", "`audio file F has no samples`", bad_file(lambda p: wav_bytes(samples=0), r"has no samples")),
    # every rate and channel count a user may have: streams
    *(Case("rate", f"WAV {rate} Hz", EXACT, wav_works(rate))
      for rate in (8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000)),
    *(Case("channels", f"WAV 48 kHz {n} channels", EXACT, wav_works(48000, n)) for n in (2, 4, 6, 8)),
    Case("stdin", "s16le 8 kHz mono", EXACT, stdin_works(8000, 1, "s16le")),
    Case("stdin", "s16le 44.1 kHz 2 channels", EXACT, stdin_works(44100, 2, "s16le")),
    Case("stdin", "f32le 96 kHz 8 channels", EXACT, stdin_works(96000, 8, "f32le")),
    # samples no audio should hold: streams, cleaned
    Case("samples", "NaN", f"{EXACT}; NaN counts as silence", stdin_with((np.nan,))),
    Case("samples", "+inf and -inf", f"{EXACT}; infinities count as silence", stdin_with((np.inf, -np.inf))),
    Case("samples", "clipped +-10.0", f"{EXACT}; clipped to full scale", stdin_with((10.0, -10.0))),
    # command-line values: one line, exit 2
    Case("option", "--fps 45", "`argument --fps: invalid choice: 45 (choose from 30, 60)`",
         command(["--fps", "45"], r"argument --fps: invalid choice: 45")),
    Case("option", "--smoothing -1", "`--smoothing -1.0 is not a number of seconds from 0 to 1.0`",
         command(["--smoothing", "-1"], r"--smoothing -1\.0 is not a number of seconds")),
    Case("option", "--smoothing nan", "`--smoothing nan is not a number of seconds from 0 to 1.0`",
         command(["--smoothing", "nan"], r"--smoothing nan is not")),
    Case("option", "--head-motion 3", "`--head-motion 3.0 is not an amount from 0 (off) to 2.0 (1: natural)`",
         command(["--head-motion", "3"], r"--head-motion 3\.0 is not an amount from 0 \(off\) to 2\.0")),
    Case("option", "--eye-motion nan", "`--eye-motion nan is not an amount from 0 (off) to 2.0 (1: natural)`",
         command(["--eye-motion", "nan"], r"--eye-motion nan is not an amount")),
    Case("option", "--seed -1", "`--seed -1 is negative: give a whole number from 0 up`",
         command(["--seed", "-1"], r"--seed -1 is negative: give a whole number from 0 up")),
    Case("option", "--person 99", "`person '99' is not a whole number from 0 to 23`",
         command(["--person", "99"], r"person '99' is not a whole number from 0 to 23")),
    Case("option", "--level 3", "`emotion level '3' is not low, high, voice or a number between 0 and 1`",
         command(["--level", "3"], r"emotion level '3' is not low, high, voice or a number")),
    Case("option", "--emotion foo:2", "`unknown emotion 'foo': use auto or one of neutral, ...`",
         command(["--emotion", "foo:2"], r"unknown emotion 'foo': use auto or one of")),
    Case("option", "--gain mouth", "`--gain 'mouth' is not REGION=FACTOR, e.g. --gain mouth=1.3 (...)`",
         command(["--gain", "mouth"], r"--gain 'mouth' is not REGION=FACTOR")),
    Case("option", "--gain mouth=abc", "`--gain 'mouth=abc' is not REGION=FACTOR, ...`",
         command(["--gain", "mouth=abc"], r"--gain 'mouth=abc' is not REGION=FACTOR")),
    Case("option", "--stdin-rate 0", "`PCM rate 0 Hz is outside 8000..192000 Hz`",
         lambda env: refused(env, ["--stdin", "--stdin-rate", "0", "--record", "f.npy"], r"PCM rate 0 Hz is outside")),
    Case("option", "--stdin-channels 0", "`0 PCM channels: give 1 to 64`",
         lambda env: refused(env, ["--stdin", "--stdin-channels", "0", "--record", "f.npy"], r"0 PCM channels")),
    Case("option", "--stdin-rate with --wav",
         "`--stdin-rate only describes the raw PCM of --stdin; --wav uses the file's own format, rate and channels: "
         "leave it out`",
         command(["--stdin-rate", "48000"], r"--stdin-rate only describes the raw PCM of --stdin; --wav uses the "
                                            r"file's own format, rate and channels: leave it out")),
    Case("option", "--stdin-format and --stdin-channels with --mic",
         "`--stdin-format, --stdin-channels only describe the raw PCM of --stdin; --mic uses the microphone's own "
         "...: leave them out`",
         lambda env: refused(env, ["--mic", "default", "--stdin-format", "f32le", "--stdin-channels", "2",
                                   "--record", "f.npy"],
                             r"--stdin-format, --stdin-channels only describe the raw PCM of --stdin; --mic uses the "
                             r"microphone's own format, rate and channels: leave them out")),
    Case("option", "--stdin at a terminal", "`--stdin reads raw PCM from a pipe, but standard input is a terminal: "
         "pipe audio into it, e.g. ffmpeg ... | emotalk-stream --stdin ..., or use --mic default or --wav FILE`",
         stdin_at_a_terminal),
    Case("option", "--osc host:0", "`--osc 'host:0': the port must be a number from 1 to 65535`",
         command(["--osc", "host:0"], r"--osc 'host:0': the port must be a number from 1 to 65535")),
    Case("option", "--record out.mp3", "`cannot record to out.mp3: the file must end in .csv ... or .npy`",
         command(["--record", "TMP/out.mp3"], r"cannot record to .*out\.mp3: the file must end in \.csv")),
    Case("option", "--record into a folder that does not exist",
         "`cannot record to D/take.csv: the folder D does not exist; create it first or record somewhere else`",
         record_into_a_missing_folder),
    Case("option", "--threads 0", "`0 engine threads: give 1 or more`", command(["--threads", "0"], r"0 engine threads")),
    Case("option", "--engine on a folder that is not an artifact", "`--engine D is not an engine artifact (no manifest.json)`",
         folder_flag("--engine", not_a_checkpoint, r"is not an engine artifact \(no manifest\.json\)")),
    Case("option", "--model on a folder that is not a checkpoint", "`checkpoint D has no model.safetensors`",
         folder_flag("--model", not_a_checkpoint, rf"checkpoint .* has no {re.escape(WEIGHTS_FILE)}")),
    # checkpoints and artifacts of another shape or version: one line, exit 2
    Case("model", "config.json of another size than its weights", "`checkpoint D: ...: the weights do not match config.json`",
         folder_flag("--model", checkpoint_of_another_size, r"the weights do not match config\.json")),
    Case("model", "manifest format_version 1",
         f"`engine artifact D has format version 1, this emotalk-stream reads {ARTIFACT_VERSION}`",
         folder_flag("--engine", lambda d: manifest(d, format_version=1),
                     rf"has format version 1, this emotalk-stream reads {ARTIFACT_VERSION}")),
    Case("model", "manifest with a changed file hash", "`D/model.onnx does not match its manifest`",
         folder_flag("--engine", changed_onnx_hash, r"model\.onnx does not match its manifest")),
    Case("model", "manifest that is not JSON", "`cannot read engine manifest D/manifest.json: ...`",
         folder_flag("--engine", manifest_not_json, r"cannot read engine manifest")),
    # OSC controls: refused and logged with the reason, board unchanged, server still serving
    Case("osc", "no arguments", "refused: `/emotalk/level takes 1 argument(s), got 0`",
         osc_refused(osc("/emotalk/level"), r"takes 1 argument\(s\), got 0")),
    Case("osc", "gain arguments swapped", "refused: `/emotalk/gain takes a region name, then a factor`",
         osc_refused(osc("/emotalk/gain", 1.3, "mouth"), r"takes a region name")),
    Case("osc", "a blob for the level", "refused: `level b'...' has the wrong type (bytes)`",
         osc_refused(osc("/emotalk/level", b"\x01\x02"), r"wrong type \(bytes\)")),
    Case("osc", "True for the person", "refused: `person True has the wrong type (bool)`",
         osc_refused(osc("/emotalk/person", True), r"person True has the wrong type \(bool\)")),
    Case("osc", "NaN smoothing", "refused: `smoothing nan is not a number of seconds from 0 to 1.0`",
         osc_refused(osc("/emotalk/smoothing", float("nan")), r"smoothing nan is not a number of seconds")),
    Case("osc", "head motion 5", "refused: `head_motion 5.0 is not an amount from 0 (off) to 2.0 (1: natural)`",
         osc_refused(osc("/emotalk/head_motion", 5.0), r"head_motion 5\.0 is not an amount from 0 \(off\) to 2\.0")),
    Case("osc", "unknown type tag", "refused: `/emotalk/level takes 1 argument(s), got 0` (python-osc skips the tag)",
         osc_refused(b"/emotalk/level\0\0,z\0\0\0\0\0\0", r"takes 1 argument\(s\), got 0")),
    Case("osc", "64 KB datagram", "refused: `8192 bytes that are not an OSC message` (read up to 8 KiB)",
         osc_refused(osc("/emotalk/emotion", "x" * 65470), r"8192 bytes that are not an OSC message")),
    Case("osc", "bundle with a garbage element", "the whole bundle refused: `N bytes that are not an OSC message`",
         osc_refused(bundle(osc("/emotalk/person", 5), b"\xde\xad\xbe\xef"), r"bytes that are not an OSC message")),
    Case("osc", "bundle of a bad control", "refused: `emotion level ... is not low, high, voice or a number ...`",
         osc_refused(bundle(osc("/emotalk/level", 9.0)), r"emotion level .* is not low, high")),
    # WebSocket JSON controls: an error reply, board unchanged, every client still gets every frame
    Case("websocket", "empty object", '`{"error": "a control message is a JSON object such as ..."}`',
         ws_refused("{}", r"a control message is a JSON object")),
    Case("websocket", "JSON null", '`{"error": "a control message is a JSON object such as ..."}`',
         ws_refused("null", r"a control message is a JSON object")),
    Case("websocket", "lists nested 2000 deep (4 KB)", '`{"error": "control message is not JSON (maximum recursion ...)"}`',
         ws_refused("[" * 2000 + "]" * 2000, r"not JSON")),
    Case("websocket", "lists nested 30000 deep (60 KB)", '`{"error": "control message of 60000 bytes; the limit is 4096"}`',
         ws_refused("[" * 30000 + "]" * 30000, r"60000 bytes; the limit is 4096")),
    Case("websocket", "5 KiB of multi-byte text", '`{"error": "control message of N bytes; the limit is 4096"}`',
         ws_refused('{"emotion": "' + "\u00e9" * 2560 + '"}', r"\d+ bytes; the limit is 4096")),
    Case("websocket", "NaN smoothing", '`{"error": "smoothing nan is not a number of seconds from 0 to 1.0"}`',
         ws_refused('{"smoothing": NaN}', r"smoothing nan is not a number of seconds")),
    Case("websocket", "eye motion as text", '`{"error": "eye_motion \'off\' has the wrong type (str)"}`',
         ws_refused('{"eye_motion": "off"}', r"eye_motion 'off' has the wrong type \(str\)")),
    Case("websocket", "a list for the gain", '`{"error": "gain [...] is not a region->factor map, ..."}`',
         ws_refused('{"gain": ["mouth", 1.3]}', r"is not a region->factor map")),
    Case("websocket", "one bad change of two", '`{"error": "person 99 ..."}`: neither change applies',
         ws_refused('{"level": 0.5, "person": 99}', r"person 99")),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
                   monkeypatch: pytest.MonkeyPatch, board: ControlBoard) -> None:
    monkeypatch.chdir(tmp_path)
    case.check(Env(tmp_path, capsys, caplog, monkeypatch, board))


def test_the_table_is_big_and_its_names_unique() -> None:
    assert len(CASES) >= 30 and len({str(c) for c in CASES}) == len(CASES)
