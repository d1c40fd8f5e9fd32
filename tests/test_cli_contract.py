"""What every command promises: `--version`, help for every option, one vocabulary (look-ahead in
milliseconds, the engine's backend names and default), and the user's mistakes named before any
model loads."""
from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.engine import Engine
from emotalk_stream.engine.backends import BACKENDS
from emotalk_stream.streamer.cli import main as stream_main
from emotalk_stream.tools.bench import build_parser as bench_parser, load_engine as bench_engine
from emotalk_stream.training.audio import read_audio
from emotalk_stream.training.config import OFFICIAL_EMOTIONS, RAVDESS_EMOTIONS
from emotalk_stream.training.errors import package_version
from emotalk_stream.training.evaluate import main as eval_main
from emotalk_stream.training.infer import main as infer_main
from emotalk_stream.training.model_files import DEFAULT_MODEL, SAMPLE_SPEECH

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


def command_parser(name: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser console script `name` builds, caught as it starts to parse (nothing runs)."""
    caught: list[argparse.ArgumentParser] = []

    def catch(parser: argparse.ArgumentParser, *_args: object, **_kwargs: object) -> argparse.Namespace:
        caught.append(parser)
        raise SystemExit(0)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    monkeypatch.setattr(sys, "argv", [name])
    [entry] = [ep for ep in importlib.metadata.distribution("emotalk-stream").entry_points if ep.name == name]
    try:
        entry.load()()
    except SystemExit:
        pass
    assert caught, f"{name} parsed no arguments"
    return caught[-1]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_of_every_command_is_documented_and_speaks_one_vocabulary(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    options = [a for a in command_parser(name, monkeypatch)._actions if a.option_strings]
    assert not [a.option_strings for a in options if not a.help], f"{name} --help leaves these unexplained"
    flags = {flag for a in options for flag in a.option_strings}
    assert not {flag for flag in flags if "lookahead" in flag} - {"--lookahead-ms"}, "look-ahead is in milliseconds"
    backend = next((a for a in options if "--backend" in a.option_strings), None)
    if backend is not None:
        assert set(backend.choices) <= set(BACKENDS), f"{name} --backend {backend.choices}; the engine's: {BACKENDS}"


def test_the_streamers_help_lists_the_emotions_and_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert stream_main(["--help"]) == 0
    text = capsys.readouterr().out
    emotions, examples = text.split("emotions for --emotion")[1].split("examples:")
    assert all(label in emotions for label in (*RAVDESS_EMOTIONS, *OFFICIAL_EMOTIONS))
    commands = [line.strip() for line in examples.strip().splitlines()]
    assert len(commands) >= 5 and all("emotalk-stream --" in line for line in commands)
    assert any("--stdin" in line and line.startswith("ffmpeg") for line in commands)


def test_the_benchmark_picks_the_backend_every_command_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint folder on torch, as `Engine.load` (the streamer, the server, offline inference)."""
    picked: list[str] = []

    def record(_cls: type, _source: object, backend: str, *_args: object, **_kwargs: object) -> None:
        picked.append(backend)
    monkeypatch.setattr(Engine, "from_checkpoint", classmethod(record))
    bench_engine(bench_parser().parse_args(["--model", str(DEFAULT_MODEL), "--no-gap"]))
    Engine.load(DEFAULT_MODEL)
    assert picked == ["torch", "torch"]


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


@pytest.mark.parametrize("main", [infer_main, eval_main], ids=["emotalk-infer", "emotalk-eval"])
def test_look_ahead_is_milliseconds_on_the_20_ms_grid_checked_before_the_model_loads(
        no_model: None, main: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = {infer_main: [str(SAMPLE_SPEECH), "--out", str(tmp_path / "face.npy")],
            eval_main: ["--data", str(tmp_path)]}[main]
    assert main([*args, "--lookahead-ms", "30"]) == 2
    # The old spelling, in frames, abbreviates --lookahead-ms now: frame counts are off the grid.
    assert main([*args, "--lookahead", "2"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "--lookahead-ms 30 ms must be a multiple of 20 ms" in lines[0], lines
    assert "--lookahead-ms 2 ms must be a multiple of 20 ms" in lines[1], lines


def test_offline_look_ahead_is_milliseconds_and_its_own_is_the_bundled_engine(tmp_path: Path) -> None:
    """0 ms is the bundled engine's own look-ahead: ONNX Runtime runs it and the frames are those of
    the default. 40 is milliseconds (40 frames would be 800 ms): the checkpoint's full-context pass
    at 40 ms, which the engine at 40 ms streams exactly."""
    takes = {}
    for name, extra in (("default", []), ("0", ["--lookahead-ms", "0"]), ("40", ["--lookahead-ms", "40"])):
        assert infer_main([str(SAMPLE_SPEECH), "--out", str(tmp_path / f"{name}.npy"), "--no-blink", *extra]) == 0
        takes[name] = np.load(tmp_path / f"{name}.npy")
    np.testing.assert_array_equal(takes["0"], takes["default"])
    at_40 = Engine.load("default", lookahead_ms=40).process([read_audio(SAMPLE_SPEECH)])[0]
    np.testing.assert_allclose(takes["40"], at_40, atol=1e-4)
    assert np.abs(takes["40"] - takes["default"]).max() > 0.01
