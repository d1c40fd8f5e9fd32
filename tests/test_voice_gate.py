"""The engine's voice gate and its default calm face, on the bundled engine (no PyTorch)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.engine import Controls, Engine
from emotalk_stream.engine.voice_activity import clip_probabilities, mouth_gate
from emotalk_stream.training.audio import read_audio
from emotalk_stream.training.blendshapes import ARTICULATION, NAMES
from emotalk_stream.training.control_values import default_emotion
from emotalk_stream.training.model_files import SAMPLE_SPEECH

ALSA_NOISE = "/usr/share/sounds/alsa/Noise.wav"


@pytest.fixture(scope="module")
def speech_then_noise() -> np.ndarray:
    """The sample voice, then a second of exact zeros, then two of white noise at -30 dBFS."""
    speech = read_audio(SAMPLE_SPEECH, 16000)
    noise = np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 10 ** (-30 / 20)
    return np.concatenate([speech, np.zeros(16000, np.float32), noise])


def test_the_gate_scales_only_the_articulation_by_the_voice_activity(engine: Engine, speech_then_noise: np.ndarray):
    [gated, open_] = engine.process([speech_then_noise] * 2, [Controls(), Controls(voice_gate=False)])
    frames = np.arange(len(gated))
    times = frames / engine.cfg.fps
    lookahead = engine.lookahead_ms / 1000
    gate = mouth_gate(clip_probabilities(speech_then_noise), times, times + lookahead, lookahead=lookahead)
    others = [i for i in range(len(NAMES)) if i not in ARTICULATION]
    assert np.array_equal(gated[:, others], open_[:, others])
    np.testing.assert_allclose(gated[:, ARTICULATION], open_[:, ARTICULATION] * gate[:, None], atol=1e-7)
    speech_end = round(len(read_audio(SAMPLE_SPEECH, 16000)) / 16000 * engine.cfg.fps)
    silent = slice(speech_end + 6, None)  # 200 ms after the voice: the zeros, then the noise
    assert gate[silent].max() == 0.0 and not gated[silent][:, ARTICULATION].any()
    assert gate[:speech_end].mean() > 0.6, "the voice itself must pass"


def test_no_mouth_on_alsa_noise_recording(engine: Engine):
    if not Path(ALSA_NOISE).exists():
        pytest.skip(f"{ALSA_NOISE} is not installed (alsa-utils)")
    [weights] = engine.process([read_audio(ALSA_NOISE, 16000)])
    assert weights[:, ARTICULATION].max() == 0.0


def test_the_default_face_is_calm_where_the_model_has_a_calm_prototype(engine: Engine):
    assert engine.emotion_setting(Controls()) == "calm"
    assert engine.emotion_setting(Controls(emotion="auto")) == "auto"
    labels = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")  # the official head
    assert default_emotion(labels, [True] * 7) == "neutral"
    assert default_emotion(labels, [False] * 7) == "auto"


def test_the_default_face_is_the_calm_override(engine: Engine, speech_then_noise: np.ndarray):
    [default, calm, auto] = engine.process([speech_then_noise] * 3, [Controls(), Controls(emotion="calm"),
                                                                    Controls(emotion="auto")])
    assert np.array_equal(default, calm) and not np.array_equal(default, auto)
