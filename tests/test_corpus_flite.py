"""The flite voices of the corpus generator, with the real flite binary (no mocks)."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from emotalk_stream.training import corpus, data, flite, sentences, visemes
from label_checks import (TEXT, assert_bilabials_close_the_lips, assert_layout, assert_missing_engine_is_one_clear_line,
                          assert_phones_of_text, assert_sad_slower_and_quieter, assert_same_bytes_with_two_workers,
                          labelled_clips, make_corpus, sad_and_angry, skip_reason)

if (MISSING := skip_reason("flite")) is not None:  # pragma: no cover - depends on the machine
    pytest.skip(MISSING, allow_module_level=True)

HOURS = 0.02  # three sentences, 24 clips
SEED = 4  # its first three sentences use all five voices, awb among them


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory, "flite", HOURS, SEED)


def test_phones_of_a_real_synthesis() -> None:
    spoken = flite.default_flite().synthesize(TEXT, "slt")
    assert_phones_of_text(spoken)
    # several utterances: times that restart continue from the last end, whitespace of any kind
    assert flite.parse_phones("pau:0.2 b:0.3\npau:0.1  m:0.25\n") == [("pau", 0.2), ("b", 0.3), ("pau", 0.4),
                                                                       ("m", 0.55)]


def test_every_phone_flite_says_has_a_viseme() -> None:
    text = " ".join(itertools.islice(sentences.sentences(3), 60))
    spoken = flite.default_flite().synthesize(text, "awb")
    names = {name for _, name in spoken.phones}
    assert names <= set(flite.ARPABET.values()) and len(names) >= 38
    assert all(flite.ARPABET[p] in visemes.BILABIALS for p in ("p", "b", "m"))
    assert all(visemes.visemes_of(flite.ARPABET[p]) == ("PP",) for p in ("p", "b", "m", "em"))


@pytest.mark.slow
def test_bilabials_close_the_lips(root: Path) -> None:
    assert_bilabials_close_the_lips(labelled_clips(root))


@pytest.mark.slow
def test_layout_voices_and_the_held_out_split(root: Path) -> None:
    rows, settings, clips = assert_layout(root, "flite", flite.VOICES, "flite-")
    for row in rows:
        assert (row["split"] == corpus.XVOICE) == (row["voice"] == corpus.HELD_OUT_VOICE)
        assert row["clip"].split("_")[2] == row["voice"]
    assert settings["held_out_voice"] == corpus.HELD_OUT_VOICE
    assert settings["counts"]["splits"][corpus.XVOICE]["clips"] == sum(r["split"] == "xvoice" for r in rows)
    held_out = data.by_split(clips, "xvoice")
    assert held_out and all(f"_{corpus.HELD_OUT_VOICE}_" in c.clip for c in held_out)
    assert not any(f"_{corpus.HELD_OUT_VOICE}_" in c.clip for c in data.by_split(clips, "train"))
    assert len(data.pair_groups(held_out)) == len(held_out) // corpus.EMOTIONS_PER_PERSON
    for job in itertools.islice(corpus.jobs(SEED, "flite"), 200):
        assert all(t.voice in flite.VOICES for t in job.takes)


@pytest.mark.slow
def test_same_seed_same_bytes_with_two_workers(root: Path, tmp_path: Path) -> None:
    assert_same_bytes_with_two_workers(root, tmp_path / "again", "flite", HOURS, SEED)


@pytest.mark.parametrize("voice", flite.VOICES)
def test_emotions_change_the_prosody(voice: str) -> None:
    """Sad is slower, lower and quieter than angry, on every voice."""
    sad, angry = sad_and_angry(lambda prosody: flite.default_flite().synthesize(TEXT, voice, prosody))
    assert_sad_slower_and_quieter(sad, angry, lower=True)


def test_missing_flite_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert_missing_engine_is_one_clear_line(tmp_path, capsys, "flite", "flite is not installed: apt-get install flite")
