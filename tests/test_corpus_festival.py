"""The Festival voices of the corpus generator, the held-out engine, with the real festival binary (no mocks)."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from emotalk_stream.training import corpus, data, festival, sentences, visemes
from emotalk_stream.training.errors import UserError
from label_checks import (TEXT, assert_bilabials_close_the_lips, assert_draws_as, assert_layout,
                          assert_missing_engine_is_one_clear_line, assert_phones_of_text, assert_sad_slower_and_quieter,
                          assert_same_bytes_with_two_workers, labelled_clips, make_corpus, sad_and_angry,
                          skip_reason)

if (MISSING := skip_reason("festival")) is not None:  # pragma: no cover - depends on the machine
    pytest.skip(MISSING, allow_module_level=True)

HOURS = 0.02  # two or three sentences, 16 to 24 clips
SEED = 4  # its first two sentences use all three voices
HINT = ("festival is not installed: apt-get install festival festvox-kallpc16k festvox-kdlpc16k "
        "festvox-us-slt-hts")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory, "festival", HOURS, SEED)


@pytest.mark.parametrize("voice", festival.VOICES)
def test_phones_of_a_real_synthesis(voice: str) -> None:
    spoken = festival.default_festival().synthesize(TEXT, voice)
    assert spoken.sample_rate == 16000
    assert_phones_of_text(spoken)


def test_segment_files_and_scheme_strings() -> None:
    saved = "separator ;\nnfields 1\n#\n0.2200 100 pau\n0.3127 100 b\n\n"
    assert festival.parse_segs(saved) == [("pau", 0.22), ("b", 0.3127)]
    assert festival.scheme_string('say "hi" \\ bye') == '"say \\"hi\\" \\\\ bye"'
    spoken = festival.default_festival().synthesize('He said "stop" to Bob.', "kal_diphone")
    assert "p" in [name for _, name in spoken.phones]


def test_every_phone_festival_says_has_a_viseme() -> None:
    text = " ".join(itertools.islice(sentences.sentences(3), 60))
    spoken = festival.default_festival().synthesize(text, "ked_diphone")
    names = {name for _, name in spoken.phones}
    assert names <= set(festival.PHONES.values()) and len(names) >= 38
    assert all(visemes.visemes_of(festival.PHONES[p]) == ("PP",) for p in ("p", "b", "m", "em"))


@pytest.mark.slow
def test_bilabials_close_the_lips(root: Path) -> None:
    assert_bilabials_close_the_lips(labelled_clips(root))


@pytest.mark.slow
def test_layout_voices_and_the_held_out_engine(root: Path) -> None:
    rows, settings, clips = assert_layout(root, "festival", festival.VOICES, "festival 2.")
    assert {r["split"] for r in rows} == {corpus.XVOICE}
    for row in rows:
        assert f"_{row['voice']}_" in row["clip"]
    assert settings["held_out_voices"] == list(festival.VOICES)
    assert settings["counts"]["splits"][corpus.XVOICE]["clips"] == len(rows)
    held_out = data.by_split(clips, corpus.XVOICE)
    assert len(held_out) == len(rows)
    with pytest.raises(UserError, match="^no clips in split 'train'"):
        data.by_split(clips, "train")
    assert len(data.pair_groups(held_out)) == len(held_out) // corpus.EMOTIONS_PER_PERSON
    for job in itertools.islice(corpus.jobs(SEED, "festival"), 200):
        assert all(t.voice in festival.VOICES for t in job.takes)
    assert_draws_as("festival", "flite", SEED, "text")  # the sentences, persons, emotions and levels of flite's


@pytest.mark.slow
def test_same_seed_same_bytes_with_two_workers(root: Path, tmp_path: Path) -> None:
    assert_same_bytes_with_two_workers(root, tmp_path / "again", "festival", HOURS, SEED)


@pytest.mark.parametrize("voice", festival.VOICES)
def test_emotions_change_the_prosody(voice: str) -> None:
    """Sad is slower, lower and quieter than angry, on every voice."""
    sad, angry = sad_and_angry(lambda prosody: festival.default_festival().synthesize(TEXT, voice, prosody))
    assert_sad_slower_and_quieter(sad, angry, lower=True)


def test_missing_festival_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert_missing_engine_is_one_clear_line(tmp_path, capsys, "festival", HINT)


def test_a_missing_voice_names_the_packages(tmp_path: Path) -> None:
    """A festival without the slt voice (a stand-in that lists only the diphone voices)."""
    fake = tmp_path / "festival"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'festival: Festival Speech Synthesis System: 2.5.0'"
                    "\necho '(kal_diphone ked_diphone)'\n")
    fake.chmod(0o755)
    with pytest.raises(UserError, match="^festival's voice cmu_us_slt_arctic_hts is not installed: apt-get install "
                                        "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts$"):
        festival.Festival(str(fake))
