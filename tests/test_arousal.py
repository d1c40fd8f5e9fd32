"""The calm face's level follows the voice's arousal (engine/arousal.py): up as the voice grows
louder or higher than its speaker's usual, never past LEVEL_MAX, whatever the microphone's gain,
the same streamed as offline."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.engine import Controls, Engine
from emotalk_stream.engine.arousal import LEVEL_MAX, Arousal, decoder_levels, frame_pitch
from emotalk_stream.training.audio import read_audio
from emotalk_stream.training.control_values import FOLLOW_VOICE, parse_level

ROOT = Path(__file__).resolve().parent.parent
SPEECH = read_audio(ROOT / "training" / "assets" / "sample.wav")  # 5 s of real speech at 16 kHz
FPS, RATE = 30, 16000


def speech_then(db: float, repeats: int = 3) -> np.ndarray:
    """The speech `repeats` times at one loudness (its speaker's usual), then once `db` louder."""
    quiet = SPEECH * np.float32(0.1)
    return np.concatenate([quiet] * repeats + [quiet * np.float32(10 ** (db / 20))])


def levels_of(audio: np.ndarray) -> np.ndarray:
    return decoder_levels(audio, len(audio) * FPS // RATE, FPS, RATE)


def test_a_voice_at_its_usual_loudness_keeps_the_level_low_and_a_raised_one_lifts_it() -> None:
    steady, raised = levels_of(speech_then(0)), levels_of(speech_then(8))
    last = slice(3 * len(SPEECH) * FPS // RATE + FPS, None)  # the last repeat, after a second of it
    assert steady.max() < 0.5 * LEVEL_MAX and steady.mean() < 0.1 * LEVEL_MAX  # the speaker's usual is not arousal
    assert raised[last].mean() > 0.6 * LEVEL_MAX
    assert 0.0 <= raised.min() and raised.max() <= LEVEL_MAX
    before = slice(0, 3 * len(SPEECH) * FPS // RATE)
    assert np.array_equal(steady[before], raised[before])  # causal


@pytest.mark.parametrize("gain_db", [-30.0, 12.0])
def test_the_level_does_not_depend_on_the_microphones_gain(gain_db: float) -> None:
    audio = speech_then(8)
    np.testing.assert_allclose(levels_of(audio * np.float32(10 ** (gain_db / 20))), levels_of(audio), atol=1e-5)


def test_a_quiet_start_before_the_voice_is_not_taken_for_its_usual() -> None:
    # a second of a quiet room before the speaker starts: without forgetting it, the usual level sat
    # far below the voice, and steady speech read as aroused (level 0.4 on a neutral voice)
    room = np.random.default_rng(0).normal(0, 10 ** (-70 / 20), RATE).astype(np.float32)
    levels = levels_of(np.concatenate([room, speech_then(0, repeats=2)]))
    assert levels.max() < 0.5 * LEVEL_MAX and levels.mean() < 0.1 * LEVEL_MAX


def test_digital_silence_holds_the_level() -> None:
    arousal = Arousal(FPS)
    for db in [-30.0] * 30 + [-20.0] * 60:
        arousal.hear(db, lambda: None)
    raised = arousal.level
    assert raised > 0.2 * LEVEL_MAX
    for _ in range(60):
        arousal.hear(None, lambda: None)
    assert arousal.level == raised


def test_the_pitch_of_a_periodic_sound_and_none_for_noise() -> None:
    t = np.arange(RATE) / RATE
    for hz in (80.0, 150.0, 300.0):  # a buzz with its harmonics, in a little noise
        buzz = 0.3 * np.sign(np.sin(2 * np.pi * hz * t)) + np.random.default_rng(1).normal(0, 0.02, RATE)
        assert frame_pitch(buzz.astype(np.float32), 0, 10, FPS, RATE) == pytest.approx(12 * np.log2(hz / 100), abs=0.3)
    noise = np.random.default_rng(2).normal(0, 0.1, RATE).astype(np.float32)
    assert frame_pitch(noise, 0, 10, FPS, RATE) is None


def test_a_higher_voice_lifts_the_level_too() -> None:
    t = np.arange(4 * RATE) / RATE
    hz = np.where(t < 3.0, 120.0, 120.0 * 2 ** (4 / 12))  # four semitones up for the last second, as loud
    buzz = (0.1 * np.sign(np.sin(2 * np.pi * np.cumsum(hz) / RATE))).astype(np.float32)
    levels = levels_of(buzz)
    assert levels[:3 * FPS].max() < 0.05 * LEVEL_MAX and levels[-FPS // 3:].mean() > 0.3 * LEVEL_MAX


def test_voice_is_a_level_every_control_spells() -> None:
    assert parse_level("voice") == parse_level(" Voice ") == FOLLOW_VOICE


def test_the_engine_decodes_at_the_levels_offline_inference_computes(engine: Engine) -> None:
    pytest.importorskip("torch")
    from emotalk_stream.training.checkpoint import load_model
    from emotalk_stream.training.offline import infer
    audio = speech_then(8, repeats=2)
    model = load_model("default")
    calm = model.cfg.emotion_labels.index("calm")
    offline, _ = infer(model, audio, FOLLOW_VOICE, 0, calm)
    following, low = engine.process([audio, audio], [Controls(), Controls(level="low")])
    np.testing.assert_allclose(following, offline, atol=2e-5)
    levels = levels_of(audio)
    assert levels[-FPS:].mean() > 0.3 * LEVEL_MAX
    # the face moves only where the level has moved: it is the calm face at level low until then
    still = np.flatnonzero(levels > 0)[0]
    np.testing.assert_allclose(following[:still], low[:still], atol=1e-6)
    assert np.abs(following[still + FPS:] - low[still + FPS:]).max() > 0.01
