"""The streaming resampler: any rate -> 16 kHz, the same in any chunking, clean and close to torchaudio."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchaudio.functional import resample

from emotalk_stream.streamer.resample import StreamingResampler
from emotalk_stream.training.audio import read_audio

SAMPLE = Path(__file__).resolve().parents[1] / "training" / "assets" / "sample.wav"
RATES = [8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000, 192000]


def one_shot(x: np.ndarray, rate: int) -> np.ndarray:
    resampler = StreamingResampler(rate)
    return np.concatenate([resampler.process(x), resampler.flush()])


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(rate=st.sampled_from(RATES + [37800, 44099]), length=st.integers(0, 5000),
       cuts=st.lists(st.integers(0, 5000), max_size=12), seed=st.integers(0, 2**32 - 1))
def test_chunked_equals_one_shot_and_length_is_rounded(rate: int, length: int, cuts: list[int], seed: int) -> None:
    x = np.random.default_rng(seed).uniform(-1, 1, length).astype(np.float32)
    whole = one_shot(x, rate)
    resampler = StreamingResampler(rate)
    pieces = [resampler.process(chunk) for chunk in np.split(x, sorted(c for c in cuts if c <= length))]
    chunked = np.concatenate(pieces + [resampler.flush()])
    assert chunked.dtype == np.float32
    assert len(whole) == (2 * length * 16000 + rate) // (2 * rate)  # round(n * 16000 / rate), half up
    np.testing.assert_allclose(chunked, whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("rate", "n_in", "n_out"), [(32000, 5, 3), (32000, 3, 2), (48000, 1, 0), (48000, 2, 1),
                                                     (44100, 44100, 16000), (8000, 7, 14), (22050, 0, 0)])
def test_output_length_rounds_half_up(rate: int, n_in: int, n_out: int) -> None:
    assert len(one_shot(np.ones(n_in, dtype=np.float32), rate)) == n_out


def test_the_resampler_starts_afresh_after_flush() -> None:
    resampler = StreamingResampler(44100)
    x = sine(300, 0.3, 44100)
    first = np.concatenate([resampler.process(x), resampler.flush()])
    second = np.concatenate([resampler.process(x), resampler.flush()])
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("rate", [44100, 48000, 96000])
def test_look_ahead_is_one_millisecond(rate: int) -> None:
    resampler = StreamingResampler(rate)
    assert 1.0 <= resampler.delay_ms < 1.05
    # One second in: all but the last 16 output samples (1 ms at 16 kHz) are ready already.
    assert len(resampler.process(np.zeros(rate, dtype=np.float32))) == 16000 - 16


def test_same_rate_is_the_identity() -> None:
    resampler = StreamingResampler(16000)
    x = np.random.default_rng(1).uniform(-1, 1, 1234).astype(np.float32)
    np.testing.assert_array_equal(resampler.process(x), x)
    assert len(resampler.flush()) == 0 and resampler.delay_ms == 0.0


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 96000])
def test_a_1khz_sine_keeps_frequency_amplitude_and_time(rate: int) -> None:
    out = one_shot(sine(1000, 1.0, rate), rate)
    assert np.argmax(np.abs(np.fft.rfft(out))) == 1000  # 1 Hz bins over one second
    inner = out[160:-160]
    assert abs(np.sqrt(2 * np.mean(inner.astype(np.float64) ** 2)) - 0.5) < 0.005  # amplitude within 1 %
    # Zero-phase filter: no shift in time either, sample for sample.
    np.testing.assert_allclose(inner, sine(1000, 1.0, 16000)[160:-160], atol=0.005)


@pytest.mark.parametrize("rate", [44100, 48000, 96000])
def test_everything_above_8khz_is_attenuated_by_more_than_60_db(rate: int) -> None:
    for freq in np.linspace(8000, rate / 2 - 100, 25):
        out = one_shot(sine(freq, 0.5, rate, amplitude=1.0), rate)[100:-100]
        level_db = 20 * np.log10(np.sqrt(2 * np.mean(out.astype(np.float64) ** 2)))
        assert level_db < -60, f"{freq:.0f} Hz from {rate} Hz comes through at {level_db:.1f} dB"


def test_a_12khz_tone_from_48khz_is_gone() -> None:
    out = one_shot(sine(12000, 1.0, 48000, amplitude=1.0), 48000)
    assert np.abs(out[32:-32]).max() < 1e-3  # -60 dB, away from the abrupt start and end


@pytest.mark.parametrize("rate", [44100, 48000])
def test_speech_matches_torchaudio(rate: int) -> None:
    speech = read_audio(SAMPLE)
    high = resample(torch.from_numpy(speech), 16000, rate).numpy()
    ours = one_shot(high, rate)
    theirs = resample(torch.from_numpy(high), rate, 16000).numpy()[:len(ours)]
    assert abs(len(ours) - len(speech)) <= 1
    error = ours[:len(theirs)] - theirs
    snr_db = 10 * np.log10(np.sum(theirs.astype(np.float64) ** 2) / np.sum(error.astype(np.float64) ** 2))
    # The only difference: our 1 ms filter rolls off from 6 kHz, torchaudio's longer one at 7.9 kHz.
    assert snr_db > 30


@pytest.mark.parametrize("rate", [7999, 192001])
def test_rates_outside_8k_to_192k_are_refused(rate: int) -> None:
    with pytest.raises(ValueError, match="outside 8000..192000"):
        StreamingResampler(rate)
