"""The flite voices of the corpus generator, with the real flite binary (no mocks)."""
from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.training import corpus, data, expressions, flite, sentences, visemes
from emotalk_stream.training.errors import UserError
from label_checks import assert_bilabials_close_the_lips

try:
    flite.default_flite()
except UserError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"needs flite ({exc})", allow_module_level=True)

HOURS = 0.02  # three sentences, 24 clips
SEED = 4  # its first three sentences use all five voices, awb among them
TEXT = "Bob moved the blue map to the pub."


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "metadata.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _f0(audio: np.ndarray, rate: int) -> float:
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


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("flite-corpus")
    corpus.generate(out, HOURS, SEED, workers=1, progress=False, voices="flite")
    return out


def test_phones_of_a_real_synthesis() -> None:
    spoken = flite.default_flite().synthesize(TEXT, "slt")
    names = [name for _, name in spoken.phones]
    assert names[0] == "_" and names[-1] == "_"
    assert [n for n in names if not visemes.is_pause(n)][:4] == ["b", "A:", "b", "m"]
    starts = [start for start, _ in spoken.phones]
    assert starts[0] == 0.0 and starts == sorted(starts) and starts[-1] < len(spoken.samples) / spoken.sample_rate
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
    assert_bilabials_close_the_lips(
        (np.load(root / "clips" / f"{row['clip']}.npy"),
         json.loads((root / "clips" / f"{row['clip']}.align.json").read_text())) for row in _rows(root))


@pytest.mark.slow
def test_layout_voices_and_the_held_out_split(root: Path) -> None:
    rows = _rows(root)
    with open(root / "metadata.csv", newline="") as handle:
        assert handle.readline().strip() == ",".join(corpus.COLUMNS + ("voice",))
    assert {r["voice"] for r in rows} == set(flite.VOICES)
    for row in rows:
        assert (row["split"] == corpus.XVOICE) == (row["voice"] == corpus.HELD_OUT_VOICE)
        assert row["clip"].split("_")[2] == row["voice"]
    for content in {r["content"] for r in rows}:  # two persons, two voices, four emotions each
        takes = [(r["person"], r["voice"]) for r in rows if r["content"] == content]
        assert len(set(takes)) == 2 and len({p for p, _ in takes}) == 2 and len({v for _, v in takes}) == 2
    settings = json.loads((root / "corpus.json").read_text())
    assert settings["held_out_voice"] == corpus.HELD_OUT_VOICE and settings["flite"].startswith("flite-")
    assert settings["counts"]["splits"][corpus.XVOICE]["clips"] == sum(r["split"] == "xvoice" for r in rows)
    clips = data.load_folder(root)
    held_out = data.by_split(clips, "xvoice")
    assert held_out and all(f"_{corpus.HELD_OUT_VOICE}_" in c.clip for c in held_out)
    assert not any(f"_{corpus.HELD_OUT_VOICE}_" in c.clip for c in data.by_split(clips, "train"))
    assert len(data.pair_groups(held_out)) == len(held_out) // corpus.EMOTIONS_PER_PERSON
    for job in itertools.islice(corpus.jobs(SEED, "flite"), 200):
        assert all(t.voice in flite.VOICES for t in job.takes)


@pytest.mark.slow
def test_same_seed_same_bytes_with_two_workers(root: Path, tmp_path: Path) -> None:
    corpus.generate(tmp_path / "again", HOURS, SEED, workers=2, progress=False, voices="flite")
    assert _files(tmp_path / "again") == _files(root)


@pytest.mark.parametrize("voice", flite.VOICES)
def test_emotions_change_the_prosody(voice: str) -> None:
    """Sad is slower, lower and quieter than angry, on every voice."""
    who = expressions.person(0)
    spoken = {emotion: flite.default_flite().synthesize(
        TEXT, voice, flite.prosody_for(who, expressions.EMOTIONS[emotion], 1.0, np.random.default_rng(0)))
        for emotion in ("sad", "angry")}
    sad, angry = spoken["sad"], spoken["angry"]
    assert len(sad.samples) / sad.sample_rate > 1.3 * len(angry.samples) / angry.sample_rate
    assert sad.phones[-1][0] > 1.3 * angry.phones[-1][0]
    assert _f0(sad.samples, sad.sample_rate) < 0.93 * _f0(angry.samples, angry.sample_rate)
    assert np.sqrt(np.mean(sad.samples ** 2)) < 0.6 * np.sqrt(np.mean(angry.samples ** 2))


def test_missing_flite_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="^flite is not installed: apt-get install flite$"):
        corpus.generate(tmp_path / "c", 0.01, 0, progress=False, voices="flite")
    assert corpus.main(["--out", str(tmp_path / "c"), "--hours", "0.01", "--voices", "flite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["emotalk-corpus: error: flite is not installed: apt-get install flite"]
    assert not (tmp_path / "c").exists()
