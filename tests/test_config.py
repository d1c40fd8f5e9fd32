"""Settings in layers: built-in defaults < --preset < config file < --profile < command line; the
config file's mistakes named in one line with the key and the file; every preset making the
outputs its app needs; and the command streaming from a config file and from a preset to real
receivers."""
from __future__ import annotations

import argparse
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import ThreadingOSCUDPServer

from emotalk_stream.engine import Engine
from emotalk_stream.streamer.cli import build_parser, main
from emotalk_stream.streamer.config import default_path, settle
from emotalk_stream.streamer.ifacialmocap_sink import IFacialMocapSink
from emotalk_stream.streamer.launch import parse_outputs
from emotalk_stream.streamer.livelink import LiveLinkSink
from emotalk_stream.streamer.osc_sink import VRM_PRESETS, OscSink
from emotalk_stream.streamer.presets import PRESETS
from emotalk_stream.training.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "training" / "assets" / "sample.wav"
CLI = [sys.executable, "-m", "emotalk_stream.streamer.cli"]


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config folder of the test's own, so no user's file takes part (and subprocesses inherit it)."""
    home = tmp_path / "config-home"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def settled(*argv: str) -> argparse.Namespace:
    """The options as `emotalk-stream ARGV` would run with them."""
    args = build_parser().parse_args(list(argv))
    settle(args, list(argv), build_parser)
    return args


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "emotalk.toml"
    path.write_text(text, encoding="utf-8")
    return path


LAYERS = """
preset = "vseeface"
vmc-shapes = "perfectsync"   # over the preset's presets
seed = 1
person = 4
level = 0.5
no-blink = true
osc-format = ["vmc"]

[profile.live]
seed = 2
person = 5
no_blink = false             # _ for - works too
mic = "USB"

[profile.unreal]
preset = "unreal"
"""


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    config = str(write(tmp_path, LAYERS))
    args = settled("--config", config, "--profile", "live", "--seed", "3", "--wav", "speech.wav")
    assert args.osc == ["127.0.0.1:39539"]  # the preset only
    assert args.vmc_shapes == "perfectsync"  # the file over the preset
    assert args.level == "0.5"  # the file only, a number for a text option
    assert args.person == "5" and args.no_blink is False  # the profile over the file
    assert args.seed == 3  # the command line over all
    assert args.wav == "speech.wav" and args.mic is None  # one audio source: the command line's
    assert args.fps == 30 and args.smoothing == 0.0  # built-in defaults where nobody says


def test_a_profile_may_pick_another_preset_and_the_command_line_another_still(tmp_path: Path) -> None:
    config = str(write(tmp_path, LAYERS))
    args = settled("--config", config, "--profile", "unreal")
    assert args.livelink == ["127.0.0.1:11111"] and args.osc == []
    args = settled("--config", config, "--profile", "unreal", "--preset", "vmagicmirror")
    assert args.ifacialmocap == ["127.0.0.1:49983"] and args.livelink == [] and args.osc == []
    assert args.vmc_shapes == "perfectsync"  # still the file's


def test_a_repeated_option_on_the_command_line_replaces_the_list_below(tmp_path: Path) -> None:
    config = str(write(tmp_path, 'osc = ["10.0.0.1:39539", "10.0.0.2:39539"]\nrecord = "take.csv"\n'))
    assert settled("--config", config).osc == ["10.0.0.1:39539", "10.0.0.2:39539"]
    assert settled("--config", config).record == ["take.csv"]  # one value for a list
    assert settled("--config", config, "--osc", "127.0.0.1:9000").osc == ["127.0.0.1:9000"]
    assert settled("--preset", "vseeface", "--osc", "127.0.0.1:9000").osc == ["127.0.0.1:9000"]
    assert settled("--preset", "vseeface", "--vmc-shapes", "both").vmc_shapes == "both"


def test_the_default_file_is_read_without_config(config_home: Path) -> None:
    assert default_path() == config_home / "emotalk-stream" / "config.toml"
    assert settled().fps == 30  # no file: nothing to read
    default_path().parent.mkdir(parents=True)
    default_path().write_text("fps = 60\n[profile.calm]\nemotion = 'calm'\n", encoding="utf-8")
    assert settled().fps == 60
    assert settled("--profile", "calm").emotion == "calm"


def test_a_file_from_a_windows_editor_is_read(tmp_path: Path) -> None:
    config = tmp_path / "emotalk.toml"
    config.write_text("fps = 60\r\nrecord = 'C:\\takes\\take.csv'\r\n", encoding="utf-8-sig")  # a BOM, CRLF
    args = settled("--config", str(config))
    assert (args.fps, args.record) == (60, ["C:\\takes\\take.csv"])  # single quotes: the backslashes as written
    config.write_text("mic = 'Micr\u00f3fono'\n", encoding="cp1252")  # Notepad's old "ANSI"
    with pytest.raises(UserError, match=r"emotalk.toml is not UTF-8 text: save it as UTF-8"):
        settled("--config", str(config))


def test_every_preset_makes_the_outputs_its_app_needs() -> None:
    made = {}
    for name in PRESETS:
        outputs = parse_outputs(settled("--preset", name, "--wav", "speech.wav"))
        made[name] = outputs.ws or [(type(s), s.host, s.port) for s in outputs.sinks]
    assert made == {
        "vseeface": [(OscSink, "127.0.0.1", 39539)],
        "vmagicmirror": [(IFacialMocapSink, "127.0.0.1", 49983)],
        "warudo": [(IFacialMocapSink, "127.0.0.1", 49983)],
        "vnyan": [(IFacialMocapSink, "127.0.0.1", 49983)],
        "unreal": [(LiveLinkSink, "127.0.0.1", 11111)],
        "obs": ("127.0.0.1", 8765),
    }
    [vseeface] = parse_outputs(settled("--preset", "vseeface", "--wav", "speech.wav")).sinks
    assert (vseeface.fmt, vseeface.shapes, vseeface.bundled) == ("vmc", "presets", True)


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading any model fails the test: the config file's mistakes must be named first."""
    def refuse(*_args: object, **_kwargs: object) -> Engine:
        raise AssertionError("the model was loaded before the settings were checked")
    for name in ("load", "from_artifact", "from_checkpoint"):
        monkeypatch.setattr(Engine, name, classmethod(refuse))


@pytest.mark.parametrize("text, profile, message", [
    ("oscc = ['127.0.0.1:9000']", None, r"FILE: unknown option 'oscc': did you mean osc\?"),
    ("colour = 'red'", None, r"FILE: unknown option 'colour': keys are emotalk-stream's long options without --"),
    ("fps = '60'", None, r"FILE: fps must be a whole number, not '60'"),
    ("fps = 45", None, r"FILE: fps must be one of 30, 60, not 45"),
    ("smoothing = 'soft'", None, r"FILE: smoothing must be a number, not 'soft'"),
    ("no-blink = 'yes'", None, r"FILE: no-blink is a flag: write no-blink = true or false, not 'yes'"),
    ("osc = [true]", None, r"FILE: osc must be a string, not True"),
    ("preset = 'obsidian'", None, r"FILE: preset must be one of vseeface, .*, obs, not 'obsidian'"),
    ("mic = 'USB'\nwav = 'a.wav'", None, r"FILE: mic and wav exclude each other: keep one"),
    ("config = 'other.toml'", None, r"FILE: unknown option 'config'"),
    ("fps = 6 0", None, r"FILE is not valid TOML \(.*at line 1, column 9\)\): fix it there"),
    ('record = "C:\\Users\\ana\\take.csv"', None, r"FILE is not valid TOML \(Invalid hex value \(at line 1, "
     r"column 15\)\): in double quotes a backslash .* single quotes \('C:\\takes\\take.csv'\) or with forward slashes"),
    ('wav = "C:\\data\\a.wav"', None, r"FILE is not valid TOML \(Unescaped .*\): in double quotes a backslash"),
    ('record = "C:\\takes\\take.csv"', None, r"FILE: record holds a tab, a newline or another control character: "
     r"in double quotes a backslash starts an escape \(\\t is a tab\), so write Windows paths in single quotes"),
    ("profile = 'live'", None, r"FILE: profile must hold tables, one per profile: \[profile.NAME\]"),
    ("[profile.live]\nfps = 60", "stage", r"FILE has no profile 'stage' \(it has: live\): add \[profile.stage\]"),
    ("[profile.live]\nfsp = 60", "live", r"FILE, profile live: unknown option 'fsp': did you mean fps\?"),
])
def test_a_mistake_in_the_file_is_one_line_naming_the_key_and_the_file(
        no_model: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, profile: str | None,
        message: str) -> None:
    config = write(tmp_path, text)
    argv = ["--config", str(config), "--wav", str(SAMPLE), "--record", str(tmp_path / "face.npy")]
    assert main(argv + (["--profile", profile] if profile else [])) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    pattern = "emotalk-stream: error: " + message.replace("FILE", re.escape(f"config file {config}"))
    assert len(lines) == 1 and re.match(pattern, lines[0]), lines


@pytest.mark.parametrize("argv, message", [
    (["--config", "missing.toml"], r"config file missing.toml does not exist: check --config"),
    (["--profile", "live"], r"--profile live needs a config file: pass --config FILE, or create .*config.toml"),
    (["--preset", "obsidian"], r"argument --preset: invalid choice: 'obsidian' .*"),
])
def test_a_missing_file_or_profile_is_one_line(no_model: None, capsys: pytest.CaptureFixture[str],
                                               argv: list[str], message: str) -> None:
    assert main(["--wav", str(SAMPLE), "--record", "face.npy", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.match("emotalk-stream: error: " + message, lines[0]), lines


@pytest.fixture
def vmc_receiver() -> Iterator[tuple[int, queue.Queue]]:
    received: queue.Queue = queue.Queue()
    dispatcher = Dispatcher()
    dispatcher.set_default_handler(lambda address, *args: received.put((address, args)))
    server = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server.server_address[1], received
    server.shutdown()
    server.server_close()


def frame_count() -> int:
    info = sf.info(str(SAMPLE))
    return -(-info.frames * 30 // info.samplerate)  # ceil(N x 30), as offline inference counts (a 16 kHz file)


def drain(received: queue.Queue) -> list[tuple[str, tuple]]:
    messages = []
    while True:
        try:
            messages.append(received.get(timeout=2))
        except queue.Empty:
            return messages


def test_the_command_streams_from_a_config_file_profile(tmp_path: Path, vmc_receiver) -> None:
    port, received = vmc_receiver
    config = write(tmp_path, f"""
quiet = true
[profile.test]
wav = "{SAMPLE}"
no-pace = true
osc = ["127.0.0.1:{port}"]
osc-format = ["arkit"]
""")
    done = subprocess.run([*CLI, "--config", str(config), "--profile", "test"], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b""  # quiet, from the file
    messages = drain(received)
    assert {address for address, _ in messages} == {"/emotalk/arkit"}
    assert sorted(args[0] for _, args in messages) == list(range(frame_count() + 1))


def test_a_preset_with_its_address_overridden_sends_the_presets_shapes(vmc_receiver) -> None:
    port, received = vmc_receiver
    done = subprocess.run([*CLI, "--preset", "vseeface", "--osc", f"127.0.0.1:{port}", "--wav", str(SAMPLE),
                           "--no-pace", "--quiet"], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    messages = drain(received)
    names = [args[0] for address, args in messages if address == "/VMC/Ext/Blend/Val"]
    assert set(names) == set(VRM_PRESETS)  # VSeeFace's preset: no perfect-sync names
    assert sum(address == "/VMC/Ext/Blend/Apply" for address, _ in messages) == frame_count() + 1
    # the voice opens the mouth (its peak is about 0.3 past the rest face; silence stays under 0.01)
    assert max(args[1] for address, args in messages if args and args[0] == "A") > 0.2
