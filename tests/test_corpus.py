"""The synthetic corpus generator, end to end with the real espeak-ng (no mocks)."""
from __future__ import annotations

import csv
import ctypes
import itertools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile

from emotalk_stream.training import blendshapes, corpus, espeak, expressions, sentences, visemes
from emotalk_stream.training.config import RAVDESS_EMOTIONS
from emotalk_stream.training.errors import UserError
from label_checks import assert_bilabials_close_the_lips

try:
    espeak.default_espeak()
except UserError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"needs espeak-ng ({exc})", allow_module_level=True)

HOURS = 0.02  # three sentences, 24 clips
SEED = 7
RATE = expressions.SAMPLE_RATE
JAW = blendshapes.INDEX["jawOpen"]


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "metadata.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _clips(root: Path):
    """(row, audio, labels, alignment) for every clip."""
    for row in _rows(root):
        audio, rate = soundfile.read(root / "clips" / f"{row['clip']}.wav", dtype="float32")
        assert rate == RATE
        labels = np.load(root / "clips" / f"{row['clip']}.npy")
        alignment = json.loads((root / "clips" / f"{row['clip']}.align.json").read_text())
        yield row, audio, labels, alignment


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _db(audio: np.ndarray, start: float, end: float) -> float:
    segment = audio[int(start * RATE):int(end * RATE)]
    return float(10 * np.log10(np.mean(segment.astype(np.float64) ** 2) + 1e-12))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    corpus.generate(out, HOURS, SEED, workers=1, progress=False)
    return out


@pytest.mark.slow
def test_layout_and_metadata(root: Path) -> None:
    with open(root / "metadata.csv", newline="") as handle:
        assert handle.readline().strip() == "clip,content,emotion,level,person,split,frames,seconds,sentence"
    rows = _rows(root)
    assert len(rows) >= 16 and len({r["clip"] for r in rows}) == len(rows)
    assert [r["clip"] for r in rows] == sorted(r["clip"] for r in rows)
    for row in rows:
        assert row["emotion"] in RAVDESS_EMOTIONS and row["level"] in ("0", "1")
        assert 0 <= int(row["person"]) < 24 and row["split"] in corpus.SPLITS
        assert row["clip"] == f"s{int(row['content']):05d}_p{int(row['person']):02d}_{row['emotion']}_{row['level']}"
        info = soundfile.info(root / "clips" / f"{row['clip']}.wav")
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(info.frames / RATE - float(row["seconds"])) < 1e-3
        assert 4 <= len(row["sentence"].split()) <= 12
    settings = json.loads((root / "corpus.json").read_text())
    assert settings["seed"] == SEED and settings["hours"] == HOURS and settings["version"] == corpus.CORPUS_VERSION
    assert settings["counts"]["clips"] == len(rows)
    assert settings["counts"]["seconds"] >= HOURS * 3600
    assert settings["blendshapes"] == list(blendshapes.NAMES)


@pytest.mark.slow
def test_labels_match_audio(root: Path) -> None:
    for row, audio, labels, alignment in _clips(root):
        assert labels.dtype == np.float32 and labels.shape == (corpus.frame_count(len(audio)), 52)
        assert labels.shape[0] == int(row["frames"]) == int(np.ceil(len(audio) / RATE * 30))
        assert labels.min() >= 0.0 and labels.max() <= 1.0
        blinks = [blendshapes.INDEX["eyeBlinkLeft"], blendshapes.INDEX["eyeBlinkRight"]]
        assert labels[:, blinks].max() < 0.2  # blinks are the streamer's business
        starts = [start for start, _, _ in alignment]
        assert starts == sorted(starts) and starts[0] >= corpus.SILENCE_S[0]
        assert alignment[-1][1] <= len(audio) / RATE - corpus.SILENCE_S[0] + 1e-3


@pytest.mark.slow
def test_same_seed_same_bytes_with_two_workers(root: Path, tmp_path: Path) -> None:
    corpus.generate(tmp_path / "again", HOURS, SEED, workers=2, progress=False)
    assert _files(tmp_path / "again") == _files(root)
    corpus.generate(tmp_path / "other", 0.005, SEED + 1, workers=1, progress=False)
    other = _rows(tmp_path / "other")
    assert other[0]["sentence"] != _rows(root)[0]["sentence"]


@pytest.mark.slow
def test_bilabials_close_the_lips(root: Path) -> None:
    assert_bilabials_close_the_lips((labels, alignment) for _, _, labels, alignment in _clips(root))


@pytest.mark.slow
def test_phoneme_events_align_with_the_sound_within_10ms(root: Path) -> None:
    """Loud vowels and silent pauses contrast most at the recorded times, not shifted ones."""
    shifts = np.arange(-0.04, 0.0401, 0.005)
    contrast = np.zeros(len(shifts))
    for _, audio, _, alignment in _clips(root):
        lead = alignment[0][0]
        assert _db(audio, 0.0, lead) < -60  # leading silence: only the noise floor
        speech = [_db(audio, s, e) for s, e, n in alignment if not visemes.is_pause(n) and e - s > 0.03]
        assert np.median(speech) > _db(audio, 0.0, lead) + 30
        for i, shift in enumerate(shifts):
            vowels = [_db(audio, s + shift, e + shift) for s, e, n in alignment if n in visemes.VOWELS and e - s > 0.05]
            pauses = [_db(audio, s + shift, e + shift) for s, e, n in alignment
                      if visemes.is_pause(n) and e - s > 0.05 and s > lead]
            if vowels and pauses:
                contrast[i] += np.mean(vowels) - np.mean(pauses)
    assert abs(shifts[int(np.argmax(contrast))]) <= 0.010


@pytest.mark.slow
def test_jaw_follows_loudness(root: Path) -> None:
    correlations = []
    for _, audio, labels, _ in _clips(root):
        t = np.arange(len(labels)) / 30
        loudness = [np.sqrt(np.mean(audio[max(0, int((k - 1 / 30) * RATE)):int((k + 1 / 30) * RATE)] ** 2)) for k in t]
        correlations.append(np.corrcoef(loudness, labels[:, JAW])[0, 1])
    assert np.median(correlations) > 0.5


@pytest.mark.slow
def test_pairs_and_splits(root: Path) -> None:
    rows = _rows(root)
    emotions = defaultdict(set)
    for row in rows:
        emotions[(row["content"], row["person"])].add(row["emotion"])
    assert all(len(found) == corpus.EMOTIONS_PER_PERSON for found in emotions.values())
    for content in {r["content"] for r in rows}:
        assert sorted(r["emotion"] for r in rows if r["content"] == content) == sorted(RAVDESS_EMOTIONS)
    by_split = defaultdict(set)
    for row in rows:
        by_split[row["split"]].add(row["sentence"])
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert not (by_split["val"] & by_split["test"])
    counts = [corpus.split_of(i, SEED) for i in range(1000)]
    assert [counts.count(s) for s in corpus.SPLITS] == [800, 100, 100]


def test_sentences_are_distinct_deterministic_and_cover_english() -> None:
    first = list(itertools.islice(sentences.sentences(3), 300))
    assert first == list(itertools.islice(sentences.sentences(3), 300)) and len(set(first)) == 300
    assert first != list(itertools.islice(sentences.sentences(4), 300))
    assert all(sentences.MIN_WORDS <= len(s.split()) <= sentences.MAX_WORDS for s in first)
    spoken = espeak.default_espeak().synthesize(" ".join(first[:60]), espeak.Voice("en-us"))
    names = {event.name for event in spoken.phonemes}
    required = {"p", "b", "m", "f", "v", "T", "D", "s", "z", "S", "Z", "tS", "dZ", "k", "g", "N", "h",
                "w", "j", "r", "l", "u:", "U", "oU", "OI", "aU", "aI", "eI", "i:", "I", "a", "V", "3:"}
    assert required <= names
    assert all(visemes.visemes_of(n) or n == ";" for n in names)


def test_espeak_event_layout_and_positions() -> None:
    assert ctypes.sizeof(espeak.EspeakEvent) == 40
    assert espeak.EspeakEvent.audio_position.offset == 16 and espeak.EspeakEvent.user_data.offset == 24
    assert espeak.EspeakEvent.id.offset == 32 and ctypes.sizeof(espeak._EventId) == 8
    engine = espeak.default_espeak()
    spoken = engine.synthesize("Peter bought a map.", espeak.Voice("en-us+m3"))
    assert spoken.sample_rate == 22050 and spoken.samples.dtype == np.int16
    assert [e.name for e in spoken.phonemes if not visemes.is_pause(e.name)][:2] == ["p", "i:"]
    for event in spoken.phonemes:
        assert abs(event.sample * 1000 / spoken.sample_rate - event.audio_position_ms) <= 1.0
    again = engine.synthesize("Peter bought a map.", espeak.Voice("en-us+m3"))
    assert np.array_equal(again.samples, spoken.samples)  # no state carried from call to call


def test_synthesize_clip_api() -> None:
    clip = corpus.synthesize_clip("Bob moved the blue map.", 5, "sad", 1, np.random.default_rng(0))
    audio, labels, phonemes = clip
    assert audio.dtype == np.float32 and np.abs(audio).max() <= 1.0
    assert labels.shape == (corpus.frame_count(len(audio)), 52) and labels.dtype == np.float32
    assert phonemes[0][0] >= corpus.SILENCE_S[0] and all(s <= e for s, e, _ in phonemes)
    same = corpus.synthesize_clip("Bob moved the blue map.", 5, "sad", 1, np.random.default_rng(0))
    assert np.array_equal(same.audio, audio) and np.array_equal(same.labels, labels)


def test_persons_are_distinct_and_fixed() -> None:
    people = [expressions.person(i) for i in range(expressions.PERSONS)]
    assert len({p.voice for p in people}) == 24
    assert all(0.8 <= p.articulation <= 1.25 for p in people)
    assert people == [expressions.person(i) for i in range(expressions.PERSONS)]
    assert tuple(expressions.EMOTIONS) == RAVDESS_EMOTIONS


def test_missing_espeak_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(espeak.LIBRARY_ENV, "libespeak-ng-missing.so.9")
    with pytest.raises(UserError, match="^espeak-ng is not installed: apt-get install espeak-ng"):
        corpus.generate(tmp_path / "c", 0.01, 0, progress=False)
    assert corpus.main(["--out", str(tmp_path / "c"), "--hours", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("emotalk-corpus: error: espeak-ng is not installed")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("hours", ["0", "-1"])
def test_hours_must_be_positive(tmp_path: Path, hours: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert corpus.main(["--out", str(tmp_path / "c"), "--hours", hours]) == 2
    assert "--hours must be greater than 0" in capsys.readouterr().err


def test_out_must_be_writable_and_new(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert corpus.main(["--out", str(blocker / "corpus"), "--hours", "0.001"]) == 2
    assert "cannot write to --out" in capsys.readouterr().err
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("keep")
    assert corpus.main(["--out", str(full), "--hours", "0.001"]) == 2
    assert "is not empty" in capsys.readouterr().err
    summary = corpus.generate(full, 0.001, 0, overwrite=True, progress=False)
    assert summary.clips == 8 and (full / "notes.txt").exists() and (full / "metadata.csv").exists()
