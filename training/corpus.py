"""emotalk-corpus: the synthetic emotional speech corpus (synthetic speech + ARKit-52 labels).

No public emotional 3D data can be downloaded, so content and emotion are known by construction:
espeak-ng speaks generated sentences with 24 voices, 8 emotions and 2 levels; the labels follow
its own phoneme events. Each sentence is spoken by 2 persons with 4 emotions each (8 clips), which
gives the cross-reconstruction pairs (same content and person, different emotion) that EmoTalk
trains on. Splits are by sentence, 80/10/10, so validation and test content is unseen.

With --voices flite the same sentences, persons (face styles), emotions and splits are spoken by
flite's voices instead (training/flite.py; two different voices per sentence, one per person), and
metadata.csv gains a `voice` column. Clips of the held-out voice (HELD_OUT_VOICE) get split
`xvoice`, never train or val: a test on a voice the model has not heard. --voices festival does the
same with Festival's kal, ked and slt voices (training/festival.py), a held-out engine: all its
clips are `xvoice`. --voices piper speaks with Piper's neural voice en_US-joe-medium
(training/piper_voice.py; both persons of a sentence with it), split like espeak-ng's corpus.
--voices kokoro speaks with Kokoro-82M (training/kokoro_voice.py): each person of a sentence gets
one of its 28 English voices, or (one in three) a mix of two of them, two different voices per
sentence; the held-out voices KOKORO_HELD_OUT, and every mix that contains one, are `xvoice`.

Layout of DIR:
    metadata.csv     clip,content,emotion,level,person,split,frames,seconds,sentence[,voice]
    corpus.json      generator settings and counts
    clips/{clip}.wav          16 kHz mono PCM16
    clips/{clip}.npy          (T, 52) float32, EmoTalk order, frame k at k/30 s
    clips/{clip}.align.json   [[start_s, end_s, phoneme], ...] in the clip's time

A seed fixes every byte, whatever the number of workers.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF
from tqdm import tqdm

from . import blendshapes, festival, flite, kokoro_voice, piper_voice, visemes
from .config import RAVDESS_EMOTIONS
from .errors import UserError, add_debug_flag, run_cli
from .espeak import Espeak, default_espeak
from .expressions import EMOTIONS, PERSONS, SAMPLE_RATE, STRENGTH, colour, face, person, voice
from .sentences import sentences

CORPUS_VERSION = 1
FPS = visemes.FPS
COLUMNS = ("clip", "content", "emotion", "level", "person", "split", "frames", "seconds", "sentence")
SPLITS = ("train", "val", "test")
ENGINES = ("espeak", "flite", "festival", "piper", "kokoro")
HELD_OUT_VOICE = "awb"  # the flite voice kept out of training: its clips are split "xvoice"
HELD_OUT_ENGINE = "festival"  # the engine kept out of training: all its clips are split "xvoice"
# The Kokoro voices kept out of training, a woman and a man of each accent (US, UK): their clips,
# and those of every mix that contains one of them, are split "xvoice".
KOKORO_HELD_OUT = ("af_sarah", "am_michael", "bf_isabella", "bm_fable")
KOKORO_MIX_SHARE = 1 / 3  # the share of Kokoro persons who speak with a mix of two voices
# A mix's first voice's share: always the larger one, so that every (first, second, share) is a
# speaker of its own (28 x 27 x 3 mixes besides the 28 voices).
KOKORO_MIX_WEIGHTS = (0.55, 0.7, 0.85)
XVOICE = "xvoice"
PERSONS_PER_SENTENCE = 2
EMOTIONS_PER_PERSON = 4
# Engines whose sentences get two different voices, each drawn from a random stream of its own.
# Kokoro's two draws are then each made a mix or not (kokoro_mix).
VOICE_DRAWS = {"flite": (0xF117E, flite.VOICES), "festival": (0xFE571, festival.VOICES),
               "kokoro": (0xC0C0A, kokoro_voice.VOICES)}
ENGINE_OF = {voice: engine for engine, voices in
             (("flite", flite.VOICES), ("festival", festival.VOICES), ("piper", piper_voice.VOICES),
              ("kokoro", kokoro_voice.VOICES))
             for voice in voices}
SILENCE_S = (0.15, 0.6)  # leading and trailing silence, each drawn from this range
NOISE_RMS = 3e-4  # the noise floor under the whole clip (about -70 dBFS)


class Clip(NamedTuple):
    audio: np.ndarray  # float32 16 kHz mono in [-1, 1]
    labels: np.ndarray  # (T, 52) float32 in [0, 1], T = ceil(len(audio) / 16000 * 30)
    phonemes: list[tuple[float, float, str]]  # the synthesizer's phoneme events, seconds in the clip


def frame_count(samples: int) -> int:
    """T = ceil(samples / 16000 * 30), in exact integer arithmetic."""
    return -(-samples * FPS // SAMPLE_RATE)


def synthesize_clip(sentence: str, person_index: int, emotion: str, level: int,
                    rng: np.random.Generator, espeak: Espeak | None = None,
                    voice_name: str | None = None) -> Clip:
    """Speak one sentence as one person with one emotion and level; audio, labels, phoneme events.

    espeak-ng speaks with the person's voice, or the engine of `voice_name` (a flite, Festival,
    Piper or Kokoro voice, or a Kokoro mix's label) when given: the person then sets the face style
    and the prosody offsets. `rng` decides the take-to-take variation (small prosody jitter, silence
    lengths, noise), so the same generator state gives the same clip.
    """
    if emotion not in EMOTIONS:
        raise ValueError(f"emotion must be one of {', '.join(RAVDESS_EMOTIONS)}, got {emotion!r}")
    if level not in (0, 1):
        raise ValueError(f"level must be 0 or 1, got {level!r}")
    who, style, strength = person(person_index), EMOTIONS[emotion], STRENGTH[level]
    if voice_name is None:
        spoken = (espeak or default_espeak()).synthesize(sentence, voice(who, style, strength, rng),
                                                          seed=int(rng.integers(2**31)))
        samples, rate = spoken.samples.astype(np.float32) / 32768.0, spoken.sample_rate
        events = [(e.sample / rate, e.name) for e in spoken.phonemes]
    else:
        said = _speak(sentence, voice_name, flite.prosody_for(who, style, strength, rng), rng)
        samples, rate, events = said.samples, said.sample_rate, list(said.phones)

    speech = AF.resample(torch.from_numpy(samples), rate, SAMPLE_RATE).numpy()
    speech = colour(speech, style, strength, rng)
    lead, trail = (int(round(rng.uniform(*SILENCE_S) * SAMPLE_RATE)) for _ in range(2))
    audio = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(trail, np.float32)])
    audio = audio + NOISE_RMS * rng.standard_normal(len(audio)).astype(np.float32)
    peak = float(np.max(np.abs(audio)))
    if peak > 0.99:
        audio *= 0.99 / peak
    audio = audio.astype(np.float32)

    offset = lead / SAMPLE_RATE
    speech_end_s = offset + len(samples) / rate
    phones = visemes.segments([offset + t for t, _ in events], [name for _, name in events], speech_end_s)
    phones = [p for p in phones if p.end > p.start]
    spoken_phones = [p for p in phones if not visemes.is_pause(p.name)]
    start = spoken_phones[0].start if spoken_phones else offset
    end = spoken_phones[-1].end if spoken_phones else offset
    frames = frame_count(len(audio))
    lower = visemes.lower_face(phones, start, end, frames)
    labels = face(lower, who, style, strength, start, end, accents(audio, phones))
    return Clip(audio, labels, [(p.start, p.end, p.name) for p in phones])


def engine_of(voice_name: str) -> str | None:
    """The engine that has `voice_name` (a Kokoro mix's label is Kokoro's), or None."""
    if voice_name in ENGINE_OF:
        return ENGINE_OF[voice_name]
    try:
        kokoro_voice.parse(voice_name)
    except ValueError:
        return None
    return "kokoro"


def held_out(voice_name: str | None) -> bool:
    """Whether a clip of `voice_name` goes to the xvoice split: flite's HELD_OUT_VOICE, any voice of
    HELD_OUT_ENGINE, a Kokoro voice of KOKORO_HELD_OUT or a mix that contains one."""
    if not voice_name:
        return False
    engine = engine_of(voice_name)
    if engine == "kokoro":
        mixed = kokoro_voice.parse(voice_name)
        return bool({mixed.name, mixed.other} & set(KOKORO_HELD_OUT))
    return voice_name == HELD_OUT_VOICE or engine == HELD_OUT_ENGINE


def kokoro_mix(name: str, rng: np.random.Generator) -> str:
    """`name`, or (KOKORO_MIX_SHARE of the time) the label of a mix of it, as the larger share,
    with another Kokoro voice. Always three draws from `rng`, mix or not."""
    chance = rng.random()
    other = int(rng.integers(len(kokoro_voice.VOICES) - 1))
    weight = KOKORO_MIX_WEIGHTS[int(rng.integers(len(KOKORO_MIX_WEIGHTS)))]
    if chance >= KOKORO_MIX_SHARE:
        return name
    others = [voice for voice in kokoro_voice.VOICES if voice != name]
    return kokoro_voice.mix(name, others[other], weight).label


def _speak(sentence: str, voice_name: str, prosody: flite.Prosody, rng: np.random.Generator) -> flite.Synthesis:
    """`sentence` spoken by the engine that has `voice_name`."""
    engine = engine_of(voice_name)
    if engine == "flite":
        return flite.default_flite().synthesize(sentence, voice_name, prosody)
    if engine == "festival":
        return festival.default_festival().synthesize(sentence, voice_name, prosody)
    if engine == "piper":
        return piper_voice.default_piper().synthesize(sentence, prosody, seed=int(rng.integers(2**31)))
    if engine == "kokoro":
        # Kokoro's one control is its speed (0.5 to 2): rate is speed, volume a gain, and the F0
        # level and range stay the voice's own, as with Piper.
        speed = min(max(prosody.rate, 0.5), 2.0)
        audio, phones = kokoro_voice.default_kokoro().synthesize(sentence, kokoro_voice.parse(voice_name), speed)
        return flite.Synthesis(audio * np.float32(prosody.volume), SAMPLE_RATE,
                               tuple((start, label) for label, start, _ in phones))
    raise ValueError(f"no engine has a voice {voice_name!r}; voices: {', '.join(ENGINE_OF)}")


def accents(audio: np.ndarray, phones: list[visemes.Segment]) -> list[tuple[float, float]]:
    """(time, prominence) of stressed vowels, found from the audio: louder and longer than usual.

    Brow raises follow these, so a model can predict them from the sound.
    """
    vowels = [p for p in phones if p.name in visemes.VOWELS and p.end - p.start > 0.02]
    if len(vowels) < 2:
        return []
    level_db = np.array([10 * np.log10(np.mean(audio[int(p.start * SAMPLE_RATE):int(p.end * SAMPLE_RATE)] ** 2)
                                       + 1e-10) for p in vowels])
    length = np.array([p.end - p.start for p in vowels])
    score = (level_db - np.median(level_db)) / 4.0 + np.log2(length / np.median(length))
    return [(p.start + 0.35 * (p.end - p.start), float(min(s, 1.0)))
            for p, s in zip(vowels, score) if s > 0.25]


@dataclass(frozen=True)
class Take:
    person: int
    emotion: str
    level: int
    voice: str | None = None  # a flite, Festival, Piper or Kokoro voice or mix; None: the person's espeak-ng voice


@dataclass(frozen=True)
class SentenceJob:
    index: int  # the content id
    text: str
    split: str
    seed: int
    takes: tuple[Take, ...]


def split_of(index: int, seed: int) -> str:
    """80/10/10 by sentence: every block of 10 consecutive sentences has 8 train, 1 val, 1 test."""
    position = int(np.random.default_rng([seed, 0x5B17, index // 10]).permutation(10)[index % 10])
    return "train" if position < 8 else ("val" if position == 8 else "test")


def jobs(seed: int, engine: str = "espeak") -> Iterator[SentenceJob]:
    """Sentences in order with their persons, emotions and levels (and voices of other engines).

    Every 12 sentences use all 24 persons once; every sentence uses all 8 emotions once (4 per
    person), so persons and emotions stay balanced in any prefix of the corpus. With flite, Festival
    or Kokoro the two persons of a sentence get two different voices, drawn from a stream of their
    own so that the rest is the same as in the espeak-ng corpus (Kokoro's each a mix or not:
    kokoro_mix); with Piper both speak with its voice.
    """
    for index, text in enumerate(sentences(seed)):
        people = np.random.default_rng([seed, 0x9E45, index // 12]).permutation(PERSONS)
        pair = people[2 * (index % 12): 2 * (index % 12) + PERSONS_PER_SENTENCE]
        rng = np.random.default_rng([seed, 0xE40, index])
        order = rng.permutation(len(RAVDESS_EMOTIONS))
        levels = rng.integers(0, 2, len(order))
        voices: list[str | None] = [None] * PERSONS_PER_SENTENCE
        if engine in VOICE_DRAWS:
            stream, names = VOICE_DRAWS[engine]
            draws = np.random.default_rng([seed, stream, index])
            picks = draws.choice(len(names), PERSONS_PER_SENTENCE, replace=False)
            voices = [names[k] for k in picks]
            if engine == "kokoro":  # two different first voices: two different speakers, mixed or not
                voices = [kokoro_mix(name, draws) for name in voices]
        elif engine == "piper":
            voices = [piper_voice.VOICE] * PERSONS_PER_SENTENCE
        takes = tuple(Take(int(pair[i // EMOTIONS_PER_PERSON]), RAVDESS_EMOTIONS[e], int(lv),
                           voices[i // EMOTIONS_PER_PERSON])
                      for i, (e, lv) in enumerate(zip(order, levels)))
        yield SentenceJob(index, text, split_of(index, seed), seed, takes)


def clip_id(index: int, take: Take) -> str:
    """`s00003_p07_slt_sad_1`; a Kokoro mix as `af_heart55-am_adam45` (no dot, so Path.with_suffix
    and Path.stem keep the whole name)."""
    voice = "_" + re.sub(r"@0[.](\d\d)", r"\1", take.voice).replace("+", "-") if take.voice else ""
    return f"s{index:05d}_p{take.person:02d}{voice}_{take.emotion}_{take.level}"


class _Rendered(NamedTuple):
    row: dict[str, str | int | float]
    files: dict[str, bytes]  # file name in clips/ -> content


def render(job: SentenceJob, espeak: Espeak | None = None) -> list[_Rendered]:
    """All clips of one sentence, encoded as file bytes (so workers do the encoding)."""
    rendered = []
    for slot, take in enumerate(job.takes):
        name = clip_id(job.index, take)
        clip = synthesize_clip(job.text, take.person, take.emotion, take.level,
                               np.random.default_rng([job.seed, job.index, slot]), espeak, take.voice)
        wav, npy = io.BytesIO(), io.BytesIO()
        soundfile.write(wav, clip.audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        np.save(npy, clip.labels)
        align = json.dumps([[round(s, 4), round(e, 4), p] for s, e, p in clip.phonemes])
        split = XVOICE if held_out(take.voice) else job.split
        row = {"clip": name, "content": job.index, "emotion": take.emotion, "level": take.level,
               "person": take.person, "split": split, "frames": int(clip.labels.shape[0]),
               "seconds": round(len(clip.audio) / SAMPLE_RATE, 4), "sentence": job.text}
        if take.voice:
            row["voice"] = take.voice
        rendered.append(_Rendered(row, {f"{name}.wav": wav.getvalue(), f"{name}.npy": npy.getvalue(),
                                        f"{name}.align.json": align.encode()}))
    return rendered


_WORKER_ESPEAK: Espeak | None = None


def _start_worker(library: str | None) -> None:
    global _WORKER_ESPEAK
    torch.set_num_threads(1)
    _WORKER_ESPEAK = Espeak(library) if library else None


def _render_in_worker(job: SentenceJob) -> list[_Rendered]:
    return render(job, _WORKER_ESPEAK)


def _rendered(seed: int, workers: int, espeak: Espeak | None, engine: str) -> Iterator[list[_Rendered]]:
    """Rendered sentences in order; with workers > 1 a few sentences are rendered ahead."""
    if workers == 1:
        for job in jobs(seed, engine):
            yield render(job, espeak)
        return
    # spawn, not fork: the caller may hold CUDA or threads that a forked worker must not inherit.
    pool = multiprocessing.get_context("spawn").Pool(workers, _start_worker, (espeak and espeak.library,))
    try:
        pending: deque = deque()
        for job in jobs(seed, engine):
            pending.append(pool.apply_async(_render_in_worker, (job,)))
            if len(pending) > 2 * workers:
                yield pending.popleft().get()
    finally:
        pool.terminate()
        pool.join()


@dataclass(frozen=True)
class CorpusSummary:
    out: Path
    clips: int
    sentences: int
    seconds: float
    splits: dict[str, dict[str, float]]  # split -> {"clips", "sentences", "seconds"}
    elapsed_s: float


def _prepare(out: Path, overwrite: bool) -> None:
    """Refuse to mix corpora: an existing non-empty --out needs --overwrite."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out} is not empty: choose a new directory or pass --overwrite")
        shutil.rmtree(out / "clips", ignore_errors=True)
        for name in ("metadata.csv", "corpus.json"):
            (out / name).unlink(missing_ok=True)
    try:
        (out / "clips").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to --out {out} ({exc.strerror}): choose a writable directory") from exc
    if not os.access(out / "clips", os.W_OK):
        raise UserError(f"cannot write to --out {out} (permission denied): choose a writable directory")


class EngineSetup(NamedTuple):
    """A speech engine as a corpus of it uses it: what corpus.json records, the metadata columns and
    splits, and for espeak-ng the library."""

    settings: dict
    columns: tuple[str, ...]
    splits: tuple[str, ...]
    espeak: Espeak | None = None


def engine_setup(voices: str, espeak_library: str | None = None) -> EngineSetup:
    """Find the engine `voices` ("espeak", "flite", "festival", "piper" or "kokoro"), or raise the
    UserError naming what to install: a caller making several corpora checks every engine first."""
    if voices not in ENGINES:
        raise UserError(f"--voices must be one of {', '.join(ENGINES)}, got {voices!r}")
    named = COLUMNS + ("voice",)
    if voices == "flite":
        return EngineSetup({"voices": "flite", "flite": flite.default_flite().version,
                            "flite_voices": list(flite.VOICES), "held_out_voice": HELD_OUT_VOICE},
                           named, SPLITS + (XVOICE,))
    if voices == "festival":
        return EngineSetup({"voices": "festival", "festival": festival.default_festival().version,
                            "festival_voices": list(festival.VOICES), "held_out_voices": list(festival.VOICES)},
                           named, SPLITS + (XVOICE,))
    if voices == "piper":
        return EngineSetup({"voices": "piper", "piper": piper_voice.default_piper().version,
                            "piper_voices": list(piper_voice.VOICES),
                            "piper_alignment_shift_s": piper_voice.ALIGNMENT_SHIFT_S},
                           named, SPLITS)
    if voices == "kokoro":
        problem = kokoro_voice.missing()  # checked here: with workers, only they load the model
        if problem:
            raise UserError(problem)
        return EngineSetup({"voices": "kokoro", "kokoro": kokoro_voice.version(),
                            "kokoro_voices": list(kokoro_voice.VOICES), "kokoro_mix_share": round(KOKORO_MIX_SHARE, 4),
                            "kokoro_mix_weights": list(KOKORO_MIX_WEIGHTS),
                            "held_out_voices": list(KOKORO_HELD_OUT)},
                           named, SPLITS + (XVOICE,))
    espeak = Espeak(espeak_library) if espeak_library else default_espeak()
    return EngineSetup({"persons": [person(i).voice for i in range(PERSONS)], "espeak_ng": espeak.version},
                       COLUMNS, SPLITS, espeak)


def generate(out: Path, hours: float, seed: int, workers: int = 1, overwrite: bool = False,
             progress: bool = True, espeak_library: str | None = None, voices: str = "espeak") -> CorpusSummary:
    """Write a corpus of at least `hours` of audio to `out` (whole sentences, so slightly more).

    `voices` is the speech engine: "espeak" (espeak-ng), "flite", "festival", "piper" or "kokoro".
    """
    if not (hours > 0 and math.isfinite(hours)):
        raise UserError(f"--hours must be greater than 0, got {hours}: e.g. --hours 3")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    engine = engine_setup(voices, espeak_library)
    out = Path(out)
    _prepare(out, overwrite)
    began = time.perf_counter()
    target = hours * 3600.0
    rows: list[dict[str, str | int | float]] = []
    seconds = 0.0
    bar = tqdm(total=max(1, round(target / 2.8)), unit="clip", desc="emotalk-corpus", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    with bar:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same arithmetic in this process as in a worker
        rendered = _rendered(seed, workers, engine.espeak, voices)
        try:
            for sentence in rendered:
                for clip in sentence:
                    for name, data in clip.files.items():
                        (out / "clips" / name).write_bytes(data)
                    rows.append(clip.row)
                    seconds += float(clip.row["seconds"])
                bar.total = max(len(rows), round(len(rows) * target / seconds))
                bar.update(len(sentence))
                if seconds >= target:
                    break
        finally:
            rendered.close()  # stops the worker pool now, not when garbage collected
            torch.set_num_threads(threads)
    rows.sort(key=lambda r: str(r["clip"]))
    with open(out / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=engine.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    splits = {s: {"clips": sum(r["split"] == s for r in rows),
                  "sentences": len({r["content"] for r in rows if r["split"] == s}),
                  "seconds": round(sum(float(r["seconds"]) for r in rows if r["split"] == s), 3)}
              for s in engine.splits}
    summary = CorpusSummary(out, len(rows), len({r["content"] for r in rows}), round(seconds, 3), splits,
                            time.perf_counter() - began)
    settings = {
        "version": CORPUS_VERSION, "generator": "emotalk-corpus", "seed": seed, "hours": hours,
        "sample_rate": SAMPLE_RATE, "fps": FPS, "blendshapes": list(blendshapes.NAMES),
        "emotions": list(RAVDESS_EMOTIONS), "levels": {"0": STRENGTH[0], "1": STRENGTH[1]},
        **engine.settings,
        "counts": {"clips": summary.clips, "sentences": summary.sentences, "seconds": summary.seconds,
                   "splits": splits},
    }
    (out / "corpus.json").write_text(json.dumps(settings, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emotalk-corpus", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory (new or empty)")
    parser.add_argument("--hours", type=float, required=True, help="hours of audio to generate")
    parser.add_argument("--seed", type=int, default=0, help="fixes every byte of the corpus (default 0)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="synthesis processes (default: the CPU count, at most 4; output is the same "
                             "for any number)")
    parser.add_argument("--voices", choices=ENGINES, default="espeak",
                        help="speech engine: espeak (espeak-ng, 24 voices; default), flite (kal, kal16, awb, "
                             f"rms, slt; {HELD_OUT_VOICE}'s clips form the {XVOICE} split), festival "
                             f"({', '.join(festival.VOICES)}; all its clips form the {XVOICE} split), piper "
                             f"({piper_voice.VOICE}) or kokoro (Kokoro-82M: {len(kokoro_voice.VOICES)} voices "
                             f"and mixes of two; {', '.join(KOKORO_HELD_OUT)} and their mixes form the "
                             f"{XVOICE} split; slow)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace clips/, metadata.csv and corpus.json in a non-empty --out")
    add_debug_flag(parser)

    def body(args: argparse.Namespace) -> int:
        summary = generate(args.out, args.hours, args.seed, args.workers, args.overwrite, voices=args.voices)
        splits = ", ".join(f"{s} {v['clips']}" for s, v in summary.splits.items())
        print(f"wrote {summary.clips} clips ({summary.seconds / 3600:.2f} h, {summary.sentences} sentences; "
              f"{splits}) to {summary.out} in {summary.elapsed_s:.0f} s")
        return 0

    return run_cli("emotalk-corpus", body, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
