"""Festival voices: the held-out engine, speech the model never trains on, with Festival's own phone times.

flite descends from Festival, but Festival's kal and ked diphone voices (UniSyn/LPC concatenation of
two speakers' recorded diphones) and the HTS voice of CMU ARCTIC's slt are other synthesizers, so a
model that did well only because it learned flite's or espeak-ng's artefacts does worse here. Every
Festival clip goes to the `xvoice` split (training/corpus.py).

Festival runs as a subprocess (`festival -b` on a generated Scheme script) that writes the wave and
`utt.save.segs`: every segment with its end time, the same numbers the waveform synthesizer placed
the units by (for the HTS voice, the durations hts_engine generated, which Festival writes back).
Festival is deterministic and each request starts a fresh process, so the same request gives the
same bytes in any process.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile

from .audio import SAMPLE_RATE, resample
from .errors import UserError
from .flite import ARPABET, Prosody, Synthesis, phone_starts

INSTALL_COMMAND = "apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"
INSTALL_HINT = f"festival is not installed: {INSTALL_COMMAND}"
VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")

# Festival's radio phone set is flite's CMU set plus flaps, [h] before a vowel, and two silences.
PHONES: dict[str, str] = {**ARPABET, "dx": "t#", "nx": "n", "hv": "h", "h#": "_", "brth": "_"}


@dataclass(frozen=True)
class _Defaults:
    """A voice's own settings (Festival's are absolute, ours relative); `f0_mean` None: an HTS voice,
    whose F0 comes from its own model and ignores Festival's intonation targets."""

    stretch: float  # Duration_Stretch
    f0_mean: float | None  # int_lr_params target_f0_mean (Hz)
    f0_std: float | None  # int_lr_params target_f0_std (Hz)


# The diphone voices' values are those their voice definitions set (festvox/*_diphone.scm).
_DEFAULTS = {"kal_diphone": _Defaults(1.1, 105.0, 14.0), "ked_diphone": _Defaults(1.1, 105.0, 15.0),
             "cmu_us_slt_arctic_hts": _Defaults(1.0, None, None)}
_RESAMPLE_STEP = 80  # the HTS voice's pitch factor in steps of 1/80, as flite's rms


def scheme_string(text: str) -> str:
    """`text` as a Scheme string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_segs(saved: str) -> list[tuple[str, float]]:
    """(phone, end_s) from an `utt.save.segs` file (an ESPS label file: a header, `#`, then
    `END_S COLOUR PHONE` lines)."""
    body = saved.split("\n#", 1)[1] if "\n#" in saved else saved
    return [(parts[2], float(parts[0])) for parts in (line.split() for line in body.splitlines())
            if len(parts) == 3]


class Festival:
    """The festival binary with the three voices, checked once; `synthesize` is safe from any process."""

    def __init__(self, binary: str | None = None) -> None:
        found = binary or shutil.which("festival")
        if not found:
            raise UserError(INSTALL_HINT)
        self.binary = found
        printed = subprocess.run([found, "--version"], capture_output=True, text=True).stdout.strip()
        self.version = "festival " + printed.rsplit("System:", 1)[-1].strip()
        with tempfile.TemporaryDirectory(prefix="emotalk-festival-") as folder:
            listed = self._run("(format t \"%l\\n\" (voice.list))", Path(folder)).stdout
        missing = [v for v in VOICES if v not in listed.replace("(", " ").replace(")", " ").split()]
        if missing:
            raise UserError(f"festival's voice {missing[0]} is not installed: {INSTALL_COMMAND}")

    def _run(self, script: str, folder: Path) -> subprocess.CompletedProcess:
        path = folder / "speak.scm"
        path.write_text(script)
        done = subprocess.run([self.binary, "-b", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"festival failed ({done.returncode}): {(done.stdout + done.stderr).strip()}")
        return done

    def synthesize(self, text: str, voice: str, prosody: Prosody = Prosody()) -> Synthesis:
        """Speak `text` with Festival voice `voice` and `prosody` -> 16 kHz audio and phone starts.

        The diphone voices take rate as Duration_Stretch and F0 level and spread as int_lr_params'
        target mean and deviation. The HTS voice takes rate as hts_engine's speed (-r); its F0 model
        ignores Festival's targets, so, as flite's rms, it is pitched by playing it back faster
        (resampling, formants moving along, the speed compensated) and keeps its own range.
        """
        if voice not in _DEFAULTS:
            raise ValueError(f"festival voice must be one of {', '.join(VOICES)}, got {voice!r}")
        defaults = _DEFAULTS[voice]
        if defaults.f0_mean is None or defaults.f0_std is None:
            shift = round(prosody.f0 * _RESAMPLE_STEP) / _RESAMPLE_STEP
            settings = (f"(set! hts_engine_params (append hts_engine_params "
                        f"(list (list \"-r\" {prosody.rate / shift:.4f}))))")
        else:
            shift = 1.0
            settings = (f"(Parameter.set 'Duration_Stretch {defaults.stretch / prosody.rate:.4f})\n"
                        f"(set! int_lr_params '((target_f0_mean {defaults.f0_mean * prosody.f0:.4f}) "
                        f"(target_f0_std {defaults.f0_std * prosody.range:.4f}) "
                        "(model_f0_mean 170) (model_f0_std 34)))")
        with tempfile.TemporaryDirectory(prefix="emotalk-festival-") as name:
            folder = Path(name)
            self._run(f"(voice_{voice})\n{settings}\n"
                      f"(set! utt (utt.synth (Utterance Text {scheme_string(text)})))\n"
                      f"(utt.save.segs utt {scheme_string(str(folder / 'speech.segs'))})\n"
                      f"(utt.save.wave utt {scheme_string(str(folder / 'speech.wav'))} 'riff)\n", folder)
            samples, native = soundfile.read(folder / "speech.wav", dtype="float32")
            ends = parse_segs((folder / "speech.segs").read_text())
        # The HTS voice: played back `shift` times faster, so every time is `shift` times shorter.
        rate = int(round(native * shift))
        audio = resample(samples * prosody.volume, rate, SAMPLE_RATE)
        phones = phone_starts(ends, PHONES, native, rate)
        return Synthesis(audio.astype(np.float32), SAMPLE_RATE, phones)


def default_festival() -> Festival:
    """The process-wide Festival found on the current PATH."""
    return _festival_on(os.environ.get("PATH", ""))


@lru_cache(maxsize=4)
def _festival_on(path: str) -> Festival:
    return Festival(shutil.which("festival", path=path))
