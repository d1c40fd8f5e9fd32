"""Vocal effort (engine/vocal_effort.py): the jaw opens wider where the voice is louder than its
speaker's usual, the same streamed as offline, whatever the microphone's gain."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.engine import Controls, Engine
from emotalk_stream.engine.vocal_effort import (RANGE_DB, SCALED, TYPICAL_ABOVE_MEAN_DB, VocalEffort, apply_effort,
                                                frame_factors)
from emotalk_stream.training.audio import read_audio
from emotalk_stream.training.blendshapes import INDEX

ROOT = Path(__file__).resolve().parent.parent
SPEECH = read_audio(ROOT / "training" / "assets" / "sample.wav")  # 5 s of real speech at 16 kHz
FPS, RATE = 30, 16000


def louder_middle(db: float) -> np.ndarray:
    """The speech with its middle second `db` louder (clipped as a sound card would)."""
    audio = SPEECH.copy()
    audio[2 * RATE:3 * RATE] *= 10 ** (db / 20)
    return np.clip(audio, -1.0, 1.0)


def test_a_louder_stretch_opens_the_jaw_wider_and_a_quieter_one_less() -> None:
    frames = 150
    plain, loud, soft = (frame_factors(a, frames, FPS, RATE) for a in (SPEECH, louder_middle(8), louder_middle(-12)))
    middle = slice(2 * FPS + 3, 3 * FPS - 3)  # frames whose sound lies in the changed second
    voiced = plain[middle] != 1.0
    assert voiced.sum() > 15
    assert np.all(loud[middle][voiced] >= plain[middle][voiced]) and loud[middle].mean() > 1.15 * plain[middle].mean()
    assert np.all(soft[middle][voiced] <= plain[middle][voiced]) and soft[middle].mean() < 0.7 * plain[middle].mean()
    assert loud.max() <= 10 ** (0.4 * RANGE_DB[1] / 20) + 1e-6 and soft.min() >= 10 ** (0.4 * RANGE_DB[0] / 20) - 1e-6
    assert np.array_equal(plain[:2 * FPS - 3], loud[:2 * FPS - 3])  # causal: nothing before the change moves


@pytest.mark.parametrize("gain_db", [-24.0, -40.0, 6.0])
def test_the_factors_do_not_depend_on_the_microphones_gain(gain_db: float) -> None:
    audio = SPEECH * np.float32(0.5)
    base = frame_factors(audio, 150, FPS, RATE)
    other = frame_factors(audio * np.float32(10 ** (gain_db / 20)), 150, FPS, RATE)
    np.testing.assert_allclose(other, base, atol=1e-5)
    assert base.std() > 0.1  # they do move with the voice


def test_digital_silence_leaves_the_face_alone_and_the_speakers_usual_is_learned_from_the_first_frame() -> None:
    effort = VocalEffort(FPS)
    assert effort.factor(None) == 1.0
    usual = TYPICAL_ABOVE_MEAN_DB
    assert effort.factor(-30.0) == pytest.approx(10 ** (0.4 * -usual / 20))  # the speaker's mean level so far
    assert effort.factor(-24.0) == pytest.approx(10 ** (0.4 * (3 - usual) / 20))  # 3 dB above the mean of both
    assert effort.factor(-80.0) == pytest.approx(10 ** (0.4 * RANGE_DB[0] / 20))  # a pause: the least, not in the mean
    assert effort.factor(-27.0) == pytest.approx(10 ** (0.4 * -usual / 20))  # the mean was not moved by the pause


def test_the_jaw_and_the_lip_closure_scale_together() -> None:
    weights = np.full((2, 52), 0.3, dtype=np.float32)
    weights[:, INDEX["mouthClose"]] = 0.28  # lips shut over an open jaw
    out = apply_effort(weights.copy(), np.array([1.5, 0.5], dtype=np.float32))
    aperture = out[:, INDEX["jawOpen"]] - out[:, INDEX["mouthClose"]]
    np.testing.assert_allclose(aperture, [0.03, 0.01], atol=1e-6)  # scaled with the jaw: a closure stays one
    others = [i for i in range(52) if i not in SCALED]
    assert np.array_equal(out[:, others], weights[:, others])


def test_the_engine_streams_the_factors_offline_inference_computes(engine: Engine) -> None:
    audio = louder_middle(8)
    on, off = engine.process([audio, audio], [Controls(), Controls(vocal_effort=False)])
    factors = frame_factors(audio, len(on), FPS, RATE)
    jaw = INDEX["jawOpen"]
    open_ = off[:, jaw] > 0.02  # where the voice gate left the mouth open
    assert open_.sum() > 50
    np.testing.assert_allclose(on[open_, jaw], np.clip(off[open_, jaw] * factors[open_], 0, 1), atol=1e-6)
    others = [i for i in range(52) if i not in SCALED]
    assert np.array_equal(on[:, others], off[:, others])


def test_fed_in_small_blocks_a_stream_gets_the_same_factors(engine: Engine) -> None:
    audio = louder_middle(-10)
    [whole] = engine.process([audio])
    stream = engine.create_stream(Controls())
    frames = []
    for start in range(0, len(audio), 333):  # blocks that do not line up with hops or frames
        stream.accept_waveform(RATE, audio[start:start + 333])
        while engine.is_ready(stream):
            engine.step([stream])
        frames += [f.weights for f in stream.frames()]
    stream.input_finished()
    while not stream.done:
        engine.step([stream])
    frames += [f.weights for f in stream.frames()]
    stream.close()
    np.testing.assert_array_equal(np.stack(frames), whole)
