"""What every speech engine's corpus test shares: making a small corpus once (or skipping with the
install hint), reading it back, the checks on its layout and labels that every engine's corpus must
pass, the emotion and missing-engine checks, and an F0 measure for its audio."""
from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.training import (blendshapes, corpus, data, expressions, festival, flite, kokoro_voice,
                                     piper_voice, visemes)
from emotalk_stream.training.errors import UserError

JAW, CLOSE = blendshapes.INDEX["jawOpen"], blendshapes.INDEX["mouthClose"]
PRESS = [blendshapes.INDEX["mouthPressLeft"], blendshapes.INDEX["mouthPressRight"]]
TEXT = "Bob moved the blue map to the pub."  # what the engines' tests say: /p b m/ and open vowels


def _problem(load: Callable[[], object]) -> str | None:
    try:
        load()
    except UserError as exc:
        return str(exc)
    return None


# engine -> (what its tests need, in words; its install hint where it is missing, else None)
_NEEDS: dict[str, tuple[str, Callable[[], str | None]]] = {
    "flite": ("flite", lambda: _problem(flite.default_flite)),
    "festival": ("festival and its voices", lambda: _problem(festival.default_festival)),
    "piper": ("Piper", piper_voice.missing),
    "kokoro": ("Kokoro", kokoro_voice.missing),
}


def skip_reason(engine: str) -> str | None:
    """`needs <engine> (<install hint>)` where the engine cannot speak on this machine, else None."""
    what, problem = _NEEDS[engine]
    hint = problem()
    return None if hint is None else f"needs {what} ({hint})"


def make_corpus(tmp_path_factory: pytest.TempPathFactory, engine: str, hours: float, seed: int,
                workers: int = 1) -> Path:
    """A small corpus of `engine`'s voices in a fresh folder (for a module-scoped fixture: it is
    slow); the tests that use it skip with the install hint where the engine is missing."""
    reason = skip_reason(engine)
    if reason is not None:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp(f"{engine}-corpus")
    corpus.generate(out, hours, seed, workers=workers, progress=False, voices=engine)
    return out


def metadata_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "metadata.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def corpus_files(root: Path) -> dict[str, bytes]:
    """Every file below `root`, by its path relative to it, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def labelled_clips(root: Path) -> Iterator[tuple[np.ndarray, list]]:
    """(labels, alignment) of every clip of the corpus, in metadata.csv's order."""
    for row in metadata_rows(root):
        yield (np.load(root / "clips" / f"{row['clip']}.npy"),
               json.loads((root / "clips" / f"{row['clip']}.align.json").read_text()))


def assert_layout(root: Path, engine: str, voices: Iterable[str], version: str,
                  voices_per_sentence: int = 2) -> tuple[list[dict[str, str]], dict, list[data.ClipInfo]]:
    """The layout every engine's corpus shares: metadata.csv's columns and the voice, exactly
    `voices` spoken, clip names that begin with their sentence and person, two persons a sentence
    with `voices_per_sentence` different voices, corpus.json naming the engine and its version
    (starting with `version`), and every person's emotions of a sentence in a pair group. Returns
    the rows, corpus.json and the clips, for the engine's own checks."""
    rows = metadata_rows(root)
    with open(root / "metadata.csv", newline="") as handle:
        assert handle.readline().strip() == ",".join(corpus.COLUMNS + ("voice",))
    assert {r["voice"] for r in rows} == set(voices)
    for row in rows:
        assert row["clip"].startswith(f"s{int(row['content']):05d}_p{int(row['person']):02d}_")
    for content in {r["content"] for r in rows}:  # two persons, four emotions each
        takes = [(r["person"], r["voice"]) for r in rows if r["content"] == content]
        assert len(set(takes)) == 2 and len({p for p, _ in takes}) == 2
        assert len({v for _, v in takes}) == voices_per_sentence
    settings = json.loads((root / "corpus.json").read_text())
    assert settings["voices"] == engine and settings[engine].startswith(version)
    clips = data.load_folder(root)
    assert len(data.pair_groups(clips)) == len(clips) // corpus.EMOTIONS_PER_PERSON
    return rows, settings, clips


def assert_draws_as(engine: str, other: str, seed: int, same: str) -> None:
    """The first 50 sentences of `engine`'s corpus have the persons, emotions and levels of
    `other`'s, and the same `same` (a SentenceJob field: "text", "split")."""
    for ours, theirs in zip(itertools.islice(corpus.jobs(seed, engine), 50),
                            itertools.islice(corpus.jobs(seed, other), 50)):
        assert [(t.person, t.emotion, t.level) for t in ours.takes] == [
            (t.person, t.emotion, t.level) for t in theirs.takes] and getattr(ours, same) == getattr(theirs, same)


def assert_same_bytes_with_two_workers(root: Path, again: Path, engine: str, hours: float, seed: int) -> None:
    """The corpus at `root`, made again in `again` by two workers: the same files, byte for byte."""
    corpus.generate(again, hours, seed, workers=2, progress=False, voices=engine)
    assert corpus_files(again) == corpus_files(root)


def assert_phones_of_text(spoken: flite.Synthesis) -> None:
    """The phones of a synthesis of TEXT: a pause at each end, /b A: b m/ the first spoken, and
    their starts from 0 in order, within the audio."""
    names = [name for _, name in spoken.phones]
    assert names[0] == "_" and names[-1] == "_"
    assert [n for n in names if not visemes.is_pause(n)][:4] == ["b", "A:", "b", "m"]
    starts = [start for start, _ in spoken.phones]
    assert starts[0] == 0.0 and starts == sorted(starts) and starts[-1] < len(spoken.samples) / spoken.sample_rate


def assert_bilabials_close_the_lips(clips: Iterable[tuple[np.ndarray, list]]) -> None:
    """(labels, alignment) pairs: at the middle of /p b m/ the lips press and the jaw rests, unlike
    in long open vowels."""
    closed, open_vowels = [], []
    for labels, alignment in clips:
        for start, end, name in alignment:
            frame = int(round((start + end) / 2 * 30))
            if name in visemes.BILABIALS:
                closed.append(labels[frame])
            elif visemes.visemes_of(name) == ("AA",) and end - start > 0.06:
                open_vowels.append(labels[frame])
    closed, open_vowels = np.array(closed), np.array(open_vowels)
    assert len(closed) >= 10 and len(open_vowels) >= 5
    assert closed[:, PRESS].mean() > 0.3 and closed[:, JAW].mean() < 0.15
    assert np.median(closed[:, JAW]) < np.median(open_vowels[:, JAW]) - 0.15
    assert closed[:, CLOSE].mean() > open_vowels[:, CLOSE].mean() + 0.1


def sad_and_angry(speak: Callable[[flite.Prosody], flite.Synthesis]) -> tuple[flite.Synthesis, flite.Synthesis]:
    """`speak` (a prosody to a synthesis) with the first person's sad, then angry, prosody at full level."""
    who = expressions.person(0)
    sad, angry = (speak(flite.prosody_for(who, expressions.EMOTIONS[emotion], 1.0, np.random.default_rng(0)))
                  for emotion in ("sad", "angry"))
    return sad, angry


def assert_sad_slower_and_quieter(sad: flite.Synthesis, angry: flite.Synthesis, lower: bool) -> None:
    """Sad is over 1.3 times as long as angry (audio and phones) and under 0.6 times as loud (RMS);
    with `lower`, its median F0 is also under 0.93 times angry's."""
    assert len(sad.samples) / sad.sample_rate > 1.3 * len(angry.samples) / angry.sample_rate
    assert sad.phones[-1][0] > 1.3 * angry.phones[-1][0]
    if lower:
        assert median_f0(sad.samples, sad.sample_rate) < 0.93 * median_f0(angry.samples, angry.sample_rate)
    assert np.sqrt(np.mean(sad.samples ** 2)) < 0.6 * np.sqrt(np.mean(angry.samples ** 2))


def assert_missing_engine_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: str,
                                            hint: str) -> None:
    """With `engine` made missing by the caller, making a corpus fails with exactly `hint`, and the
    command says it on one line, exits 2 and writes nothing."""
    with pytest.raises(UserError, match=f"^{re.escape(hint)}$"):
        corpus.generate(tmp_path / "c", 0.01, 0, progress=False, voices=engine)
    assert corpus.main(["--out", str(tmp_path / "c"), "--hours", "0.01", "--voices", engine]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"emotalk-corpus: error: {hint}"]
    assert not (tmp_path / "c").exists()


def median_f0(audio: np.ndarray, rate: int) -> float:
    """Median F0 (Hz) of the clearly voiced 40 ms frames, by normalised autocorrelation."""
    width, hop, found = int(0.04 * rate), int(0.01 * rate), []
    floor = 0.1 * np.sqrt(np.mean(audio ** 2))
    for i in range(0, len(audio) - width, hop):
        x = audio[i:i + width] - audio[i:i + width].mean()
        if np.sqrt(np.mean(x ** 2)) < floor:
            continue
        ac = np.correlate(x, x, "full")[width - 1:] / (np.dot(x, x) + 1e-12)
        low, high = rate // 400, rate // 60
        lag = low + int(np.argmax(ac[low:high]))
        if ac[lag] > 0.5:
            found.append(rate / lag)
    return float(np.median(found))
