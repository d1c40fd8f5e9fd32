"""The face relative to the model's rest face: zero on silence, order kept, emotions kept."""
from __future__ import annotations

import numpy as np
import pytest

from emotalk_stream.engine import Controls, Engine
from emotalk_stream.engine.rest_face import REST_SECONDS, relative_to_rest
from emotalk_stream.training.audio import read_audio
from emotalk_stream.training.blendshapes import INDEX
from emotalk_stream.training.model_files import SAMPLE_SPEECH


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load("default")


def test_the_knee_is_zero_at_zero_keeps_order_and_removes_the_rest_far_above_it() -> None:
    weights = np.linspace(0.0, 1.0, 201)[:, None].repeat(2, axis=1)
    out = relative_to_rest(weights, np.array([0.1, 0.0]))
    assert out[0, 0] == 0.0 and np.all(np.diff(out[:, 0]) > 0)  # 0 at 0, strictly increasing
    assert out[20, 0] == pytest.approx(0.1 * np.exp(-1.0), abs=1e-6)  # at the rest: 0.37 x rest
    assert out[-1, 0] == pytest.approx(0.9, abs=1e-3)  # far above: the whole rest removed
    np.testing.assert_allclose(out[:, 1], weights[:, 1], atol=1e-7)  # a channel without rest is unchanged


def test_the_rest_face_is_not_zero_and_silence_then_shows_a_face_at_rest(engine: Engine) -> None:
    silence = np.zeros(int(2 * REST_SECONDS * 16000), dtype=np.float32)
    raw, relative = engine.process([silence, silence], [Controls(voice_gate=False, rest_relative=False),
                                                       Controls(voice_gate=False)])
    assert raw[-1, INDEX["jawOpen"]] > 0.05  # the model's own rest keeps the mouth open
    # The calm face is at level low by default; past REST_SECONDS the face on silence still drifts a
    # little (the voice's running mean keeps moving), so 8 s of it is within 0.02 of the rest face.
    np.testing.assert_allclose(raw[-1], engine.rest_face(0.0, 0), atol=0.02)
    assert relative[-30:].max() <= 0.4 * raw[-1].max()


def test_a_named_emotion_keeps_its_expression(engine: Engine) -> None:
    speech = read_audio(SAMPLE_SPEECH, 16000)
    sad, calm = engine.process([speech, speech], [Controls(emotion="sad"), Controls()])
    for name in ("browInnerUp", "mouthFrownLeft"):  # the calm face's rest is taken from both
        assert sad[:, INDEX[name]].mean() > calm[:, INDEX[name]].mean() + 0.2


def test_an_engine_exported_on_the_fly_finds_its_rest_face_after_the_export_is_gone() -> None:
    """A checkpoint on ONNX Runtime is exported to a temporary folder, deleted once loaded; the rest
    face is found later, on a spare backend of the same graph."""
    engine = Engine.from_checkpoint("default", backend="onnxruntime", lookahead_ms=20)
    assert not engine.backend.path.exists()
    [weights] = engine.process([read_audio(SAMPLE_SPEECH, 16000)[:16000]])
    assert weights.shape == (30, 52) and np.isfinite(weights).all()
