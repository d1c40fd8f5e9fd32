"""`emotalk-fuzz`: hypothesis fuzzing of every parser that reads what a user or a network peer sends.

    python -m emotalk_stream.tools.fuzz --examples 100000 [--json] [--seed S] [--target NAME]

The examples are split evenly between the targets; a failure is any exception or broken property,
caught and counted, so every example runs (no shrinking; the first failing inputs are printed). A
Python warning fails an example too: it would be a stray line on the user's stderr.

  json   ControlBoard.submit_json (the WebSocket controls) on arbitrary text and bytes, on JSON built
         from recursive strategies and on nesting bombs: returns None or a reason, never raises, and
         the board only ever holds controls the engine accepts.
  osc    the OSC control server's handling of one datagram (its own path, without the socket) on
         arbitrary bytes and on valid messages and bundles mutated by bit flips, cuts and random type
         tags: never raises, and the real server still answers over loopback afterwards.
  audio  read_audio on arbitrary bytes and on mutated valid WAV/FLAC/AIFF/AU files: a finite float32
         array in [-1, 1] or UserError, nothing else.
  pcm    StdinSource on arbitrary byte streams, s16le and f32le, 1-8 channels, standard rates: output
         finite, in [-1, 1] and exactly round(frames x 16000 / rate) samples long (half up).

Exit code 0 when nothing failed, 1 when something did, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import logging
import math
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from pythonosc.osc_message_builder import OscMessageBuilder

from ..engine import Controls, Engine
from ..streamer.controls import MAX_JSON_BYTES, NAMES, OSC_PREFIX, ControlBoard
from ..streamer.face import MAX_MOTION, MAX_SMOOTHING_S, FaceSettings
from ..streamer.osc_control import OscControlServer
from ..streamer.sources import PCM_FORMATS, StdinSource
from ..training.audio import SAMPLE_RATE, read_audio
from ..training.blendshapes import REGIONS
from ..training.errors import UserError, add_debug_flag, run_cli

PROG = "emotalk-fuzz"
RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000)  # what users' files and pipes have
KEEP_FAILURES = 3  # failing inputs kept per target for the report
SHOWN_BYTES = 120  # of a failing input in the report
FUZZ_ORIGIN = ("127.0.0.1", 9)
PCM_TIMEOUT_S = 10.0  # a source that has not finished by then hangs


@dataclass
class Outcome:
    """What one target did: examples run, failures among them, the first few failing inputs."""

    examples: int = 0
    failures: int = 0
    seconds: float = 0.0
    first_failures: list[str] = field(default_factory=list)

    def check(self, example: object, body: Callable[[object], None]) -> None:
        """Run `body(example)`; an exception or a Python warning (a line on the user's stderr) fails it."""
        self.examples += 1
        try:
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                body(example)
            assert not warned, f"warning: {warned[0].message}"
        except Exception as exc:  # noqa: BLE001 - any exception is the finding
            self.fail(f"{type(exc).__name__}: {exc} <- {repr(example)[:SHOWN_BYTES]}")

    def fail(self, what: str) -> None:
        self.failures += 1
        if len(self.first_failures) < KEEP_FAILURES:
            self.first_failures.append(what)


def _fuzz(strategy: st.SearchStrategy, examples: int, rng_seed: int, body: Callable[[object], None]) -> Outcome:
    """Run `body` on `examples` inputs drawn from `strategy`, counting failures instead of stopping."""
    outcome = Outcome()

    @seed(rng_seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(example: object) -> None:
        outcome.check(example, body)

    start = time.monotonic()
    run()
    outcome.seconds = time.monotonic() - start
    return outcome


@st.composite
def _mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes], header: int = 64) -> bytes:
    """`valid` bytes with up to four bit flips, cuts, random bytes, 32-bit header words or OSC type tags."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        kind = draw(st.sampled_from(("flip", "cut", "byte", "word", "tag")))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        elif kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind == "word":
            at = draw(st.integers(0, max(0, min(header, len(data)) - 4)))
            data[at:at + 4] = draw(st.binary(min_size=4, max_size=4))
        elif (comma := data.find(b",")) >= 0:  # a type tag: one OSC knows or not, or a terminator
            data[min(len(data) - 1, comma + 1 + at % 4)] = ord(draw(st.sampled_from("ifsbhdtTFNIScrm[]xz\0")))
    return bytes(data)


# ---------------------------------------------------------------- controls (JSON and OSC)

@functools.cache
def _engine() -> Engine:
    """The bundled model, once per process: the control board checks values against it."""
    return Engine.load("default")


def _board() -> ControlBoard:
    return ControlBoard(_engine(), Controls(), FaceSettings())


def _check_board(board: ControlBoard) -> None:
    """Whatever was accepted, the board holds controls the engine and the face take."""
    controls, face, _ = board.current
    _engine().resolve_controls(controls)
    assert math.isfinite(face.smoothing) and 0.0 <= face.smoothing <= MAX_SMOOTHING_S, face
    assert isinstance(face.blink, bool), face
    assert all(math.isfinite(a) and 0.0 <= a <= MAX_MOTION for a in (face.head_motion, face.eye_motion)), face


def _control_values() -> st.SearchStrategy:
    """Leaves that mean something to a control, and leaves that do not."""
    labels = _engine().cfg.emotion_labels
    words = st.sampled_from(["auto", "low", "high", *REGIONS, *labels, *(f"{label}:0.7" for label in labels),
                             "happy:2", "sad:nan", "angry:-1", "mouth=1.3"])
    return st.one_of(words, st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))


def _json_messages() -> st.SearchStrategy:
    values = st.recursive(_control_values(), lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=8), inner, max_size=4)),
        max_leaves=16)
    as_json = st.one_of(values, st.dictionaries(st.sampled_from(NAMES), values, min_size=1, max_size=3)).map(json.dumps)
    bomb = st.tuples(st.integers(1, 3000), st.sampled_from("[{")).map(
        lambda d: ('{"a":' * d[0] + "1" + "}" * d[0]) if d[1] == "{" else "[" * d[0] + "]" * d[0])
    oversized = st.integers(MAX_JSON_BYTES - 20, MAX_JSON_BYTES + 20).map(lambda n: '{"emotion": "' + "x" * n + '"}')
    return st.one_of(st.text(max_size=200), st.binary(max_size=200), as_json, as_json.map(str.encode), bomb, oversized)


def fuzz_json(examples: int, rng_seed: int = 0) -> Outcome:
    """ControlBoard.submit_json: None or a reason, never an exception; only valid controls stick."""
    board = _board()

    def body(message: object) -> None:
        reason = board.submit_json(message, "fuzz")  # type: ignore[arg-type]
        assert reason is None or (isinstance(reason, str) and reason), repr(reason)
        _check_board(board)

    return _fuzz(_json_messages(), examples, rng_seed, body)


def _osc_message(address: str, args: list[object]) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


def _osc_bundle(elements: list[bytes]) -> bytes:
    """An immediate bundle: '#bundle', time tag 1, then each element with its size."""
    return b"#bundle\0" + (1).to_bytes(8, "big") + b"".join(len(e).to_bytes(4, "big") + e for e in elements)


def _osc_datagrams() -> st.SearchStrategy[bytes]:
    text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), max_size=16)  # UTF-8 encodable
    address = st.sampled_from([OSC_PREFIX + name for name in NAMES]) | text.map(lambda t: "/" + t)
    arg = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(width=32), text, st.binary(min_size=1, max_size=16),
                    st.booleans(), st.none(), _control_values().filter(lambda v: isinstance(v, str) and "\0" not in v))
    message = st.builds(_osc_message, address, st.lists(arg, max_size=4))
    bundle = st.lists(message, min_size=0, max_size=3).map(_osc_bundle)
    oversized = st.integers(8000, 65507).map(lambda n: _osc_message(OSC_PREFIX + "emotion", ["x" * n]))
    return st.one_of(st.binary(max_size=512), _mutated(message | bundle), message, bundle, oversized)


def fuzz_osc(examples: int, rng_seed: int = 0) -> Outcome:
    """The OSC control server on one datagram at a time: never raises, never stops serving."""
    board = _board()
    control = OscControlServer("127.0.0.1", 0, board)
    control.open()
    try:
        def body(datagram: object) -> None:
            control.handle_datagram(datagram, FUZZ_ORIGIN)  # type: ignore[arg-type]
            _check_board(board)

        outcome = _fuzz(_osc_datagrams(), examples, rng_seed, body)
        if not _still_serves(control, board):
            outcome.fail("the server did not apply a valid /emotalk/person sent over loopback after the run")
        return outcome
    finally:
        control.close()


def _still_serves(control: OscControlServer, board: ControlBoard, timeout: float = 5.0) -> bool:
    person = 5 if board.current[0].person != 5 else 6
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(_osc_message(OSC_PREFIX + "person", [person]), control.address)
    deadline = time.monotonic() + timeout
    while board.current[0].person != person:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ---------------------------------------------------------------- audio files and PCM pipes

FILE_KINDS = (("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "PCM_U8"), ("WAV", "FLOAT"),
              ("WAV", "DOUBLE"), ("WAV", "ULAW"), ("FLAC", "PCM_16"), ("AIFF", "PCM_16"), ("AU", "FLOAT"))


def _samples(frames: int, channels: int, noise_seed: int, specials: bool) -> np.ndarray:
    """Noise beyond full scale; with `specials`, NaN and infinities in it."""
    audio = np.random.default_rng(noise_seed).uniform(-1.5, 1.5, (frames, channels))
    if specials and audio.size:
        audio.flat[[0, audio.size // 2, audio.size - 1]] = [np.nan, np.inf, -np.inf]
    return audio


@st.composite
def _sound_file(draw: st.DrawFn) -> bytes:
    container, subtype = draw(st.sampled_from(FILE_KINDS))
    channels = draw(st.integers(1, 8))
    specials = subtype in ("FLOAT", "DOUBLE") and draw(st.booleans())  # only float files hold NaN
    audio = _samples(draw(st.integers(0, 300)), channels, draw(st.integers(0, 2**32 - 1)), specials)
    buffer = io.BytesIO()
    sf.write(buffer, audio, draw(st.sampled_from(RATES)), subtype=subtype, format=container)
    return buffer.getvalue()


def fuzz_audio(examples: int, rng_seed: int = 0) -> Outcome:
    """read_audio: a finite float32 mono array in [-1, 1], or UserError; nothing else."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.wav"

        def body(data: object) -> None:
            path.write_bytes(data)  # type: ignore[arg-type]
            try:
                audio = read_audio(path)
            except UserError:
                return
            assert isinstance(audio, np.ndarray) and audio.dtype == np.float32 and audio.ndim == 1, repr(audio)
            assert np.isfinite(audio).all() and np.abs(audio).max(initial=0.0) <= 1.0, "samples outside [-1, 1]"

        return _fuzz(st.one_of(st.binary(max_size=512), _mutated(_sound_file())), examples, rng_seed, body)


def _pcm_bytes() -> st.SearchStrategy[bytes]:
    floats = st.lists(st.floats(width=32), max_size=256).map(lambda v: np.array(v, "<f4").tobytes())
    ints = st.lists(st.integers(-32768, 32767), max_size=256).map(lambda v: np.array(v, "<i2").tobytes())
    return st.one_of(st.binary(max_size=2048), floats, ints)


def fuzz_pcm(examples: int, rng_seed: int = 0) -> Outcome:
    """StdinSource: finite output in [-1, 1] of round(frames x 16000 / rate) samples, whatever the bytes."""
    cases = st.tuples(st.sampled_from(sorted(PCM_FORMATS)), st.integers(1, 8), st.sampled_from(RATES), _pcm_bytes())

    def body(case: object) -> None:
        fmt, channels, rate, data = case  # type: ignore[misc]
        audio = _read_pcm(StdinSource(fmt, rate, channels, stream=io.BytesIO(data)))
        frames = len(data) // (np.dtype(PCM_FORMATS[fmt][0]).itemsize * channels)
        assert len(audio) == (2 * frames * SAMPLE_RATE + rate) // (2 * rate), f"{len(audio)} samples from {frames}"
        assert np.isfinite(audio).all() and np.abs(audio).max(initial=0.0) <= 1.0, "samples outside [-1, 1]"

    return _fuzz(cases, examples, rng_seed, body)


def _read_pcm(source: StdinSource) -> np.ndarray:
    """Everything the source hands out until it finishes."""
    chunks = []
    deadline = time.monotonic() + PCM_TIMEOUT_S
    source.start()
    try:
        while not source.finished:
            assert time.monotonic() < deadline, "the source never finished"
            chunk = source.read(0.5)
            if chunk is not None:
                chunks.append(chunk)
    finally:
        source.close()
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


TARGETS: dict[str, Callable[[int, int], Outcome]] = {
    "json": fuzz_json, "osc": fuzz_osc, "audio": fuzz_audio, "pcm": fuzz_pcm}


# ---------------------------------------------------------------- the command

@contextlib.contextmanager
def _isolated() -> Iterator[None]:
    """No log line per refused input, and hypothesis's caches in a temporary folder, not ./.hypothesis."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as home:
        set_hypothesis_home_dir(home)
        try:
            yield
        finally:
            set_hypothesis_home_dir(None)
            logging.disable(previous)


def run_targets(names: list[str], examples: int, rng_seed: int = 0) -> dict[str, Outcome]:
    """`examples` split evenly between the targets `names` (the first ones take the remainder)."""
    share, extra = divmod(examples, len(names))
    with _isolated():
        return {name: TARGETS[name](share + (i < extra), rng_seed) for i, name in enumerate(names)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Fuzz the control parsers and audio readers with hypothesis.")
    p.add_argument("--examples", type=int, default=100_000, help="inputs in all, split evenly (default 100000)")
    p.add_argument("--target", action="append", choices=TARGETS, help="only this target (repeatable; default all)")
    p.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0: the same inputs every run)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_debug_flag(p)
    return p


def _run(args: argparse.Namespace) -> int:
    names = args.target or list(TARGETS)
    if args.examples < len(names):
        raise UserError(f"--examples {args.examples}: give at least one per target ({len(names)})")
    outcomes = run_targets(names, args.examples, args.seed)
    total = Outcome(sum(o.examples for o in outcomes.values()), sum(o.failures for o in outcomes.values()),
                    sum(o.seconds for o in outcomes.values()))
    if args.json:
        print(json.dumps({"examples": total.examples, "failures": total.failures, "seconds": round(total.seconds, 1),
                          "seed": args.seed, "targets": {name: {**asdict(o), "seconds": round(o.seconds, 1)}
                                                          for name, o in outcomes.items()}}))
    else:
        for name, o in [*outcomes.items(), ("total", total)]:
            print(f"{name:>6}: {o.examples} examples, {o.failures} failures, {o.seconds:.1f} s")
            for failure in o.first_failures:
                print(f"        {failure}")
    return 1 if total.failures else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, _run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
