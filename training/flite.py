"""flite voices: speech from real speakers' recordings, with the synthesizer's own phone timings.

espeak-ng is a formant synthesizer, so a model trained on it alone has never heard a human voice.
flite's awb, rms and slt are clustergen voices trained on CMU ARCTIC speakers, kal and kal16
diphone voices spliced from one speaker's recordings. flite runs as a subprocess: `-psdur` prints
every phone with its end time, which match the audio to a few ms, and flite is deterministic, so
the same request gives the same bytes in any process.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile

from .errors import UserError
from .expressions import Emotion, Person

INSTALL_HINT = "flite is not installed: apt-get install flite"
VOICES = ("kal", "kal16", "awb", "rms", "slt")

# The CMU phone set as flite prints it -> the espeak-ng mnemonic visemes.py knows (p, b, m stay
# p, b, m: the bilabials, which must close the lips).
ARPABET: dict[str, str] = {
    "pau": "_", "aa": "A:", "ae": "a", "ah": "V", "ao": "O:", "aw": "aU", "ax": "@", "axr": "3",
    "ay": "aI", "eh": "E", "er": "3:", "ey": "eI", "ih": "I", "iy": "i:", "ow": "oU", "oy": "OI",
    "uh": "U", "uw": "u:", "b": "b", "ch": "tS", "d": "d", "dh": "D", "el": "@L", "em": "m", "en": "n",
    "f": "f", "g": "g", "hh": "h", "jh": "dZ", "k": "k", "l": "l", "m": "m", "n": "n", "ng": "N",
    "p": "p", "r": "r", "s": "s", "sh": "S", "t": "t", "th": "T", "v": "v", "w": "w", "y": "j",
    "z": "z", "zh": "Z",
}


@dataclass(frozen=True)
class _Defaults:
    """What a voice speaks with unless told otherwise (flite's settings are absolute, ours relative)."""

    stretch: float  # duration_stretch
    stddev: float | None  # int_f0_target_stddev in Hz; None: the voice ignores F0 targets


# kal's values are in its source; awb's and slt's measured (their F0 spread matches flite's own
# output at these). rms's F0 model ignores int_f0_target_* and f0_shift, so it is pitched by
# resampling instead.
_DEFAULTS = {"kal": _Defaults(1.1, 14.0), "kal16": _Defaults(1.1, 14.0), "awb": _Defaults(1.0, 25.0),
             "rms": _Defaults(1.0, None), "slt": _Defaults(1.0, 27.0)}
_RESAMPLE_STEP = 80  # rms's pitch factor in steps of 1/80, so resampling ratios stay small integers
_NEUTRAL_RATE = 175.0  # words per minute that a person's espeak-ng rate counts as 1x


@dataclass(frozen=True)
class Prosody:
    """Relative to the voice's own: speaking rate, mean F0 and F0 spread (x), loudness (gain)."""

    rate: float = 1.0
    f0: float = 1.0
    range: float = 1.0
    volume: float = 1.0


@dataclass(frozen=True)
class Synthesis:
    samples: np.ndarray  # float32 mono
    sample_rate: int
    phones: tuple[tuple[float, str], ...]  # (start_s, espeak-style name)


def prosody_for(who: Person, emotion: Emotion, strength: float, rng: np.random.Generator) -> Prosody:
    """The espeak-ng person and emotion settings (expressions.voice) in flite's relative terms.

    One espeak-ng pitch unit counts as 1/100 octave and range 50 as the voice's own spread, so
    anger and joy come out faster, higher, wider and louder, sadness slower, lower, flatter and
    quieter, fear faster and higher with less range, calm slower and softer.
    """
    rate = who.rate / _NEUTRAL_RATE * (1 + strength * (emotion.rate - 1)) * rng.uniform(0.97, 1.03)
    f0 = 2 ** ((who.pitch - 50 + strength * emotion.pitch + rng.uniform(-2.0, 2.0)) / 100)
    spread = max(0.2, (who.range + strength * emotion.range + rng.uniform(-3.0, 3.0)) / 50)
    return Prosody(rate, f0, spread, 1 + strength * (emotion.volume - 1))


def parse_phones(printed: str) -> list[tuple[str, float]]:
    """(phone, end_s) from `flite -psdur` output (`pau:0.220 b:0.309 ...`, any whitespace).

    A time that goes backwards starts a new utterance, whose times continue from the last end.
    """
    phones: list[tuple[str, float]] = []
    offset = 0.0
    for name, time in re.findall(r"([a-z]+):(\d+(?:\.\d*)?)", printed):
        end = float(time)
        if phones and end + offset < phones[-1][1]:
            offset = phones[-1][1]
        phones.append((name, end + offset))
    return phones


class Flite:
    """The flite binary, found once; `synthesize` is safe to call from any process."""

    def __init__(self, binary: str | None = None) -> None:
        found = binary or shutil.which("flite")
        if not found:
            raise UserError(INSTALL_HINT)
        self.binary = found
        printed = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout
        self.version = next((line.split(":", 1)[1].strip() for line in printed.splitlines()
                             if "version:" in line), printed.strip())

    def synthesize(self, text: str, voice: str, prosody: Prosody = Prosody()) -> Synthesis:
        """Speak `text` with flite voice `voice` and `prosody`; the same request, the same bytes."""
        if voice not in _DEFAULTS:
            raise ValueError(f"flite voice must be one of {', '.join(VOICES)}, got {voice!r}")
        defaults = _DEFAULTS[voice]
        shift = 1.0 if defaults.stddev else round(prosody.f0 * _RESAMPLE_STEP) / _RESAMPLE_STEP
        settings = {"duration_stretch": defaults.stretch / prosody.rate * shift}
        if defaults.stddev:
            settings.update(f0_shift=prosody.f0, int_f0_target_stddev=defaults.stddev * prosody.range)
        command = [self.binary, "-voice", voice, "-psdur"]
        for name, value in settings.items():
            command += ["--setf", f"{name}={value:.4f}"]
        with tempfile.TemporaryDirectory(prefix="emotalk-flite-") as folder:
            wav = Path(folder) / "speech.wav"
            done = subprocess.run(command + ["-t", text, "-o", str(wav)], capture_output=True, text=True)
            if done.returncode != 0 or not wav.exists():
                raise RuntimeError(f"flite failed ({done.returncode}): {done.stderr.strip()}")
            samples, native = soundfile.read(wav, dtype="float32")
        # rms: played back `shift` times faster, which raises its pitch; its stretch compensated.
        rate = int(round(native * shift))
        phones = phone_starts(parse_phones(done.stdout), ARPABET, native, rate)
        return Synthesis((samples * prosody.volume).astype(np.float32), rate, phones)


def phone_starts(ends: list[tuple[str, float]], names: dict[str, str], native: int, rate: int
                 ) -> tuple[tuple[float, str], ...]:
    """(start_s, phone) from an engine's (name, end_s) list: each phone starts where the one before
    ends; times of audio made at `native` Hz and played back at `rate` Hz (faster, to raise a voice's
    pitch); names mapped through `names` to the viseme table's."""
    starts = [0.0] + [end for _, end in ends[:-1]]
    return tuple((start * native / rate, names[name]) for start, (name, _) in zip(starts, ends))


def default_flite() -> Flite:
    """The process-wide Flite found on the current PATH."""
    return _flite_on(os.environ.get("PATH", ""))


@lru_cache(maxsize=4)
def _flite_on(path: str) -> Flite:
    return Flite(shutil.which("flite", path=path))
