"""The file resampler in training/audio.py: numpy, no PyTorch, the same samples as torchaudio's default.

The comparisons with torchaudio skip where only the runtime is installed; the rest checks the
resampler against a direct, unvectorised evaluation of the same windowed-sinc formula.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emotalk_stream.training import audio as audio_module
from emotalk_stream.training.audio import _resample_kernel, read_audio, rescale_count, resample

SAMPLE = Path(__file__).resolve().parents[1] / "training" / "assets" / "sample.wav"
RATES = [8000, 11025, 22050, 44100, 48000]
# Against torchaudio computing in float64 we differ by float32 rounding only (measured <= 2.4e-7).
ATOL_EXACT = 1e-6
# torchaudio on float32 input also builds its kernel in float32, which costs it up to 2.5e-5 at
# 11025 Hz (the longest kernel rows); ours is built in float64, so this is its error, not ours.
ATOL_TORCHAUDIO_FLOAT32 = 1e-4


def speech_like(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Voiced syllables (a gliding pitch with harmonics up to Nyquist) and noisy fricatives."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 160 + 60 * np.sin(2 * np.pi * 0.7 * t) + 20 * np.sin(2 * np.pi * 5.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    harmonics = np.arange(1, min(60, int(rate / 2 / f0.max())))  # up to 13 kHz, above the new Nyquist
    voiced = (np.sin(np.outer(phase, harmonics)) / harmonics).sum(axis=1)
    syllables = np.sin(2 * np.pi * 4 * t) ** 2
    fricatives = rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 1.5 * t + 1) > 0.8)
    x = voiced * syllables * (1 - (np.sin(2 * np.pi * 1.5 * t + 1) > 0.8)) + 0.3 * fricatives
    return (0.9 * x / np.abs(x).max()).astype(np.float32)


def direct(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """The windowed-sinc formula evaluated in float64, a few outputs at a time: y[k] = sum over i of
    x[i] h(i / orig - k / new), h a Hann-windowed sinc with 6 zero crossings a side."""
    common = math.gcd(rate, target)
    orig, new = rate // common, target // common
    base = min(orig, new) * 0.99
    n_out = -(-new * len(x) // orig)
    reach = math.ceil(6 * orig / base) + 1  # input samples a side where h is not zero
    y = np.zeros(n_out)
    for first in range(0, n_out, 256):
        k = np.arange(first, min(first + 256, n_out))
        lo, hi = max(0, k[0] * orig // new - reach), min(len(x), k[-1] * orig // new + reach + 1)
        t = (np.arange(lo, hi)[None, :] / orig - k[:, None] / new) * base
        t = np.clip(t, -6, 6)
        y[k] = (np.sinc(t) * np.cos(t * np.pi / 12) ** 2 * base / orig) @ x[lo:hi].astype(np.float64)
    return y


def real_speech(rate: int) -> np.ndarray:
    """The bundled 16 kHz speech sample at `rate` (upsampled by torchaudio in float64)."""
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torchaudio.functional")
    speech, sample_rate = sf.read(str(SAMPLE), dtype="float64")
    assert sample_rate == 16000
    return functional.resample(torch.from_numpy(speech), 16000, rate).numpy().astype(np.float32)


def torchaudio_resample(x: np.ndarray, rate: int, dtype: str) -> np.ndarray:
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torchaudio.functional")
    return functional.resample(torch.from_numpy(x.astype(dtype)), rate, 16000).numpy()


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("signal", ["speech_like", "real_speech"])
def test_equals_torchaudio(rate: int, signal: str) -> None:
    pytest.importorskip("torchaudio")
    x = speech_like(rate, 1.0) if signal == "speech_like" else real_speech(rate)
    ours = resample(x, rate, 16000)
    exact = torchaudio_resample(x, rate, "float64")
    assert ours.dtype == np.float32 and ours.shape == exact.shape
    np.testing.assert_allclose(ours, exact, atol=ATOL_EXACT, rtol=0)
    # What read_audio returned when it called torchaudio (float32 throughout).
    np.testing.assert_allclose(ours, torchaudio_resample(x, rate, "float32"), atol=ATOL_TORCHAUDIO_FLOAT32, rtol=0)


@pytest.mark.parametrize("rate", RATES + [32000, 37800, 96000, 192000])
@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 7, 31, 441, 443, 1001])
def test_lengths_round_up_and_match_the_formula(rate: int, length: int) -> None:
    x = np.random.default_rng(length).uniform(-1, 1, length).astype(np.float32)
    ours = resample(x, rate, 16000)
    assert ours.dtype == np.float32
    assert len(ours) == math.ceil(length * 16000 / rate)
    np.testing.assert_allclose(ours, direct(x, rate, 16000), atol=ATOL_EXACT, rtol=0)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("length", [1, 2, 3, 5, 7, 1001])
def test_tiny_and_odd_lengths_equal_torchaudio(rate: int, length: int) -> None:
    pytest.importorskip("torchaudio")
    x = np.random.default_rng(length).uniform(-1, 1, length).astype(np.float32)
    np.testing.assert_allclose(resample(x, rate, 16000), torchaudio_resample(x, rate, "float64"),
                               atol=ATOL_EXACT, rtol=0)


@pytest.mark.parametrize(("rate", "target"), [(16000, 8000), (8000, 48000), (22050, 44100)])
def test_other_rate_pairs_match_the_formula(rate: int, target: int) -> None:
    x = speech_like(rate, 0.05)
    np.testing.assert_allclose(resample(x, rate, target), direct(x, rate, target), atol=ATOL_EXACT, rtol=0)


def unblocked(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """The same strided convolution as one matrix product over every window at once."""
    kernel, width = _resample_kernel(rate, target)
    common = math.gcd(rate, target)
    orig, new = rate // common, target // common
    padded = np.concatenate([np.zeros(width, np.float32), x, np.zeros(width + orig, np.float32)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1])[::orig]
    return (windows @ kernel.T).reshape(-1)[:-(-new * len(x) // orig)]


@pytest.mark.parametrize("rate", [11025, 44100, 48000])
def test_many_blocks_equal_one_product(rate: int) -> None:
    kernel, _ = _resample_kernel(rate, 16000)
    rows_per_block = audio_module.RESAMPLE_BLOCK // kernel.shape[1]
    windows_per_row = rate // math.gcd(rate, 16000)
    # Two and a half blocks, ending in a partial one (noise: a minute of speech_like takes long).
    length = int(2.5 * rows_per_block * windows_per_row) + 13
    x = np.random.default_rng(rate).uniform(-0.9, 0.9, length).astype(np.float32)
    ours = resample(x, rate, 16000)
    assert len(ours) > 2 * rows_per_block * (16000 // math.gcd(rate, 16000))
    np.testing.assert_allclose(ours, unblocked(x, rate, 16000), atol=5e-7, rtol=0)


@pytest.mark.parametrize("block", [1, 475, 476, 951, 5000])
def test_block_size_does_not_change_the_samples(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    x = speech_like(44100, 0.25)
    whole = unblocked(x, 44100, 16000)
    monkeypatch.setattr(audio_module, "RESAMPLE_BLOCK", block)  # 1 to 10 windows (475 taps) a block
    np.testing.assert_allclose(resample(x, 44100, 16000), whole, atol=5e-7, rtol=0)


def test_kernel_is_built_once_per_rate_pair_in_float32() -> None:
    kernel, width = _resample_kernel(44100, 16000)
    assert _resample_kernel(44100, 16000)[0] is kernel
    assert kernel.dtype == np.float32 and kernel.shape == (160, 2 * width + 441) and width == 17
    assert _resample_kernel(11025, 16000)[0].shape == (640, 455)


def test_same_rate_and_empty_input() -> None:
    x = speech_like(16000, 0.1)
    same = resample(x, 16000, 16000)
    np.testing.assert_array_equal(same, x)
    assert same is not x
    assert resample(np.zeros(0, np.float32), 44100, 16000).shape == (0,)


def stereo_44k_wav(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 44.1 kHz stereo 16-bit WAV and the mean of its channels as soundfile reads them back."""
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([speech_like(44100, 1.3, seed=1), speech_like(44100, 1.3, seed=2)], axis=1),
             44100, subtype="PCM_16")
    stored, _ = sf.read(str(path), dtype="float32")
    return path, stored.mean(axis=1)


def test_44k_stereo_wav_reads_as_resampled_mean(tmp_path: Path) -> None:
    path, mono = stereo_44k_wav(tmp_path)
    audio = read_audio(path)
    assert audio.dtype == np.float32 and len(audio) == rescale_count(len(mono), 16000, 44100)
    expected = np.clip(direct(mono, 44100, 16000)[:len(audio)], -1, 1)
    np.testing.assert_allclose(audio, expected, atol=ATOL_EXACT, rtol=0)


def test_44k_stereo_wav_reads_as_torchaudio_resamples(tmp_path: Path) -> None:
    pytest.importorskip("torchaudio")
    path, mono = stereo_44k_wav(tmp_path)
    audio = read_audio(path)
    expected = np.clip(torchaudio_resample(mono, 44100, "float64")[:len(audio)], -1, 1)
    np.testing.assert_allclose(audio, expected, atol=ATOL_EXACT, rtol=0)


def test_the_module_does_not_import_torch() -> None:
    code = ("import sys, emotalk_stream.training.audio as a; "
            "import numpy as np; a.resample(np.zeros(100, np.float32), 44100, 16000); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchaudio')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
