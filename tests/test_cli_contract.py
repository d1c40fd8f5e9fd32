"""What every command promises: `--version`, and the user's mistakes named before any model loads."""
from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

from emotalk_stream.engine import Engine
from emotalk_stream.streamer.cli import main as stream_main
from emotalk_stream.training.errors import package_version
from emotalk_stream.training.infer import main as infer_main
from emotalk_stream.training.model_files import SAMPLE_SPEECH

COMMANDS = sorted(ep.name for ep in importlib.metadata.distribution("emotalk-stream").entry_points
                  if ep.group == "console_scripts")


def test_every_command_is_listed() -> None:
    assert {"emotalk-stream", "emotalk-infer", "emotalk-train", "emotalk-export", "emotalk-fuzz"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_version(name: str, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    [entry] = [ep for ep in importlib.metadata.distribution("emotalk-stream").entry_points if ep.name == name]
    monkeypatch.setattr(sys, "argv", [name, "--version"])
    assert entry.load()() == 0
    assert capsys.readouterr().out == f"{name} {package_version()}\n"


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading any model fails the test: the refusals below must come first."""
    def refuse(*_args: object, **_kwargs: object) -> Engine:
        raise AssertionError("the model was loaded before the arguments were checked")
    for name in ("load", "from_artifact", "from_checkpoint"):
        monkeypatch.setattr(Engine, name, classmethod(refuse))


@pytest.mark.parametrize("args, message", [
    (["--wav", "missing.wav", "--osc", "127.0.0.1:9000"], "audio file missing.wav does not exist"),
    (["--wav", str(SAMPLE_SPEECH), "--osc", "127.0.0.1:99999"], "--osc"),
    (["--wav", str(SAMPLE_SPEECH), "--livelink", "nohost"], "--livelink"),
    (["--wav", str(SAMPLE_SPEECH), "--ws", "x:y"], "--ws"),
    (["--wav", str(SAMPLE_SPEECH), "--osc", "127.0.0.1:9000", "--control", "127.0.0.1:0"], "--control"),
    (["--wav", str(SAMPLE_SPEECH), "--record", "face.txt"], "must end in .csv"),
    (["--mic", "no such microphone anywhere", "--osc", "127.0.0.1:9000"], "no such microphone anywhere"),
])
def test_the_streamer_names_a_mistake_before_the_model_loads(no_model: None, args: list[str], message: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert stream_main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emotalk-stream: error: ") and message in lines[0], lines


def test_offline_inference_names_a_missing_file_before_the_model_loads(no_model: None, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert infer_main([str(tmp_path / "missing.wav"), "--out", str(tmp_path / "face.npy")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0]
