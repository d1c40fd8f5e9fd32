"""The runtime path never imports PyTorch: live streaming and offline inference of the bundled model
run on ONNX Runtime alone, in fresh interpreters, end to end."""
from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.tools import launch
from emotalk_stream.training.errors import missing_modules
from emotalk_stream.training.model_files import SAMPLE_SPEECH

# Runs a command's main() in this fresh interpreter, then reports its exit code and whether torch
# was ever imported (sys.modules keeps every module imported, lazily or not).
DRIVER = """
import importlib, json, sys
module, report, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
rc = importlib.import_module(module).main(argv)
loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchaudio', 'safetensors'))
with open(report, 'w') as f:
    json.dump({'rc': rc, 'loaded': loaded}, f)
"""
RUNTIME_MODULES = [
    "emotalk_stream.engine", "emotalk_stream.engine.artifact", "emotalk_stream.engine.backends",
    "emotalk_stream.streamer.pipeline", "emotalk_stream.streamer.sources", "emotalk_stream.streamer.websocket_sink",
    "emotalk_stream.streamer.osc_sink", "emotalk_stream.streamer.livelink", "emotalk_stream.streamer.recorder",
    "emotalk_stream.training.audio", "emotalk_stream.training.livelink_csv", "emotalk_stream.training.model_files",
]


def _run(module: str, args: list[str], tmp_path: Path) -> tuple[dict, str]:
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-c", DRIVER, module, str(report), *args],
                          capture_output=True, text=True, timeout=120)
    assert report.exists(), done.stderr
    return json.loads(report.read_text()), done.stderr


def test_streaming_a_file_to_a_real_receiver_never_imports_torch(tmp_path: Path) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(0.5)
    packets: list[bytes] = []
    streamed = threading.Event()

    def receive() -> None:  # while the streamer runs: the kernel's buffer holds only a few dozen bundles
        with contextlib.suppress(OSError):
            while True:
                try:
                    packets.append(receiver.recv(65536))
                except TimeoutError:
                    if streamed.is_set():  # the streamer has exited and nothing more came
                        return

    listener = threading.Thread(target=receive, daemon=True)
    listener.start()
    record = tmp_path / "face.npy"
    try:
        result, err = _run("emotalk_stream.streamer.cli", [
            "--wav", str(SAMPLE_SPEECH), "--no-pace", "--quiet", "--osc", f"127.0.0.1:{receiver.getsockname()[1]}",
            "--record", str(record), "--emotion", "sad:0.8", "--level", "low", "--person", "3",
            "--gain", "mouth=1.2"], tmp_path)
        streamed.set()
        listener.join(timeout=10)
    finally:
        receiver.close()
    assert result == {"rc": 0, "loaded": []}, err
    frames = np.load(record)
    assert frames.shape == (151, 52) and len(packets) >= len(frames)  # every frame (ceil 5.007 s x 30), then the neutral one


def test_offline_inference_never_imports_torch_and_equals_the_stream(tmp_path: Path) -> None:
    out = tmp_path / "face.npy"
    result, err = _run("emotalk_stream.training.infer", [str(SAMPLE_SPEECH), "--out", str(out), "--no-blink"], tmp_path)
    assert result == {"rc": 0, "loaded": []}, err
    from emotalk_stream.engine import Engine
    from emotalk_stream.training.audio import read_audio
    streamed = Engine.from_artifact("default").process([read_audio(SAMPLE_SPEECH)])[0]
    np.testing.assert_array_equal(np.load(out), streamed)


def test_runtime_modules_import_neither_torch_nor_a_command() -> None:
    code = (f"import importlib, sys\nfor m in {RUNTIME_MODULES!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchaudio')"
            " or m in ('emotalk_stream.training.infer', 'emotalk_stream.streamer.cli')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_training_command_without_its_extra_says_so_in_one_line(capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert missing_modules(("json",), "train") is None
    monkeypatch.setattr(sys, "argv", ["emotalk-train", "--epochs", "1"])
    entry = launch._entry("emotalk-train", "emotalk_stream.training.trainer", ("emotalk_no_such_module",), "train")
    assert entry() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["emotalk-train: error: emotalk-train needs the train extra (emotalk_no_such_module not "
                   "installed): pip install 'emotalk-stream[train]'"]
    monkeypatch.setattr(sys, "argv", ["emotalk-train", "--version"])
    assert entry() == 0 and capsys.readouterr().out.startswith("emotalk-train ")
