"""The input level normaliser: exact in pieces, the same in a batch, and blind to the input gain."""
from __future__ import annotations

import numpy as np
import pytest

from emotalk_stream.training.audio import read_audio
from emotalk_stream.training.input_level import (
    BLOCK, FLOOR_DB, TARGET_DB, LevelNormaliser, model_input, normalise_together,
)
from emotalk_stream.training.model_files import SAMPLE_SPEECH


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return read_audio(SAMPLE_SPEECH, 16000)


def test_pieces_of_any_size_give_the_same_samples(speech):
    whole = model_input(speech, "agc")
    normaliser, rng, pieces, start = LevelNormaliser(), np.random.default_rng(1), [], 0
    while start < len(speech):
        size = int(rng.integers(0, 900))
        pieces.append(normaliser.process(speech[start:start + size]))
        start += size
    assert np.array_equal(whole, np.concatenate(pieces))


def test_a_batch_equals_each_clip_alone(speech):
    clips = np.stack([speech, 0.05 * speech[::-1].copy(), np.zeros_like(speech)])
    batch = model_input(clips, "agc")
    for row, clip in zip(batch, clips):
        assert np.array_equal(row, model_input(clip, "agc"))


def test_streams_normalised_together_equal_each_alone(speech):
    """The engine's step: each stream's next 320 samples in one batched pass, streams starting 40
    samples in (the step's leading zeros), as each stream's own normaliser gives them."""
    clips = [speech, 0.05 * speech[::-1].copy(), np.zeros_like(speech)]
    together, alone = [LevelNormaliser() for _ in clips], [LevelNormaliser() for _ in clips]
    got, want = [], []
    for start, stop in [(0, 40), *((s, s + 320) for s in range(40, 16000, 320))]:
        got.append(normalise_together(together, np.stack([clip[start:stop] for clip in clips])))
        want.append(np.stack([n.process(clip[start:stop]) for n, clip in zip(alone, clips)]))
    assert np.array_equal(np.concatenate(got, axis=1), np.concatenate(want, axis=1))
    assert {n.place for n in together} == {40}
    with pytest.raises(ValueError, match="one place in the block"):
        normalise_together([LevelNormaliser(), together[0]], np.zeros((2, 320), np.float32))


@pytest.mark.parametrize("gain_db", [-24.0, -12.0, 6.0])
def test_the_gain_of_the_input_does_not_reach_the_model(speech, gain_db):
    """After the first syllable the tracked level has followed the gain: the outputs agree."""
    reference = model_input(speech, "agc")
    scaled = model_input(speech * 10 ** (gain_db / 20), "agc")
    settled = slice(16000, None)  # from 1 s on
    error = np.abs(scaled[settled] - reference[settled]).max()
    assert error < 1e-3 * np.abs(reference[settled]).max()
    raw_ratio = 10 ** (gain_db / 20)
    assert abs(np.std(scaled[settled]) / np.std(reference[settled]) - 1) < 0.01 < abs(raw_ratio - 1)


def test_speech_is_brought_to_the_target_level_and_silence_stays_silent(speech):
    out = model_input(speech * 10 ** (-30 / 20), "agc")
    blocks = out[: len(out) // BLOCK * BLOCK].reshape(-1, BLOCK)
    loudest_db = 10 * np.log10(np.max(np.mean(blocks.astype(np.float64) ** 2, axis=1)))
    assert TARGET_DB - 3 < loudest_db < TARGET_DB + 6
    assert not model_input(np.zeros(16000, np.float32), "agc").any()


def test_quiet_noise_is_amplified_at_most_to_the_floor_gain():
    noise = np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 10 ** (-80 / 20)
    out = model_input(noise, "agc")
    assert np.std(out) <= np.std(noise) * 10 ** ((TARGET_DB - FLOOR_DB) / 20) * 1.01


def test_raw_mode_passes_the_audio_through(speech):
    assert np.array_equal(model_input(speech, "raw"), speech)
    with pytest.raises(ValueError, match="input_level"):
        model_input(speech, "loud")
