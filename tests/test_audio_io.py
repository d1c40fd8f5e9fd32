"""Reading and writing audio: any file in, 16 kHz mono float32 in [-1, 1] out, or one clear error."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emotalk_stream.training.audio import read_audio, write_wav
from emotalk_stream.training.errors import UserError


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_write_then_read_is_16_bit_pcm_and_round_trips(tmp_path: Path) -> None:
    audio = sine(440, 0.5, 16000)
    path = tmp_path / "sub" / "a.wav"  # the folder is created
    write_wav(path, audio)
    assert sf.info(str(path)).subtype == "PCM_16"
    back = read_audio(path)
    assert back.dtype == np.float32 and back.shape == audio.shape
    np.testing.assert_allclose(back, audio, atol=1 / 32768 + 1e-6)


def test_stereo_44k_is_downmixed_by_mean_and_resampled(tmp_path: Path) -> None:
    left, right = sine(440, 1.0, 44100, 0.8), sine(440, 1.0, 44100, 0.2)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    audio = read_audio(path)
    assert abs(len(audio) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 2
    # Mean of the channels: amplitude (0.8 + 0.2) / 2.
    assert abs(np.abs(audio[1000:-1000]).max() - 0.5) < 0.01


def test_nan_inf_and_overrange_samples_are_made_safe(tmp_path: Path) -> None:
    path = tmp_path / "bad.wav"
    sf.write(str(path), np.array([0.5, np.nan, np.inf, -np.inf, 2.0, -3.0], dtype=np.float32), 16000,
             subtype="FLOAT")
    np.testing.assert_array_equal(read_audio(path), [0.5, 0.0, 0.0, 0.0, 1.0, -1.0])


def test_other_target_rate(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    write_wav(path, sine(200, 1.0, 16000), 16000)
    assert abs(len(read_audio(path, sample_rate=8000)) - 8000) <= 1


def _truncated(tmp_path: Path) -> Path:
    path = tmp_path / "full.wav"
    write_wav(path, sine(440, 1.0, 16000))
    cut = tmp_path / "truncated.wav"
    cut.write_bytes(path.read_bytes()[:5000])
    return cut


def _make(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.wav"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    elif kind == "header_only":
        write_wav(path, sine(440, 0.1, 16000))
        path.write_bytes(path.read_bytes()[:30])
    elif kind == "no_samples":
        sf.write(str(path), np.zeros(0, dtype=np.float32), 16000)
    elif kind == "folder":
        path.mkdir()
    elif kind == "truncated":
        return _truncated(tmp_path)
    return path


@pytest.mark.parametrize("kind, words", [
    ("missing", "does not exist"),
    ("empty", "empty"),
    ("random", "cannot read"),
    ("header_only", "cannot read"),
    ("no_samples", "no samples"),
    ("folder", "folder"),
    ("truncated", "truncated"),
])
def test_bad_files_raise_one_clear_user_error(tmp_path: Path, kind: str, words: str) -> None:
    path = _make(kind, tmp_path)
    with pytest.raises(UserError) as info:
        read_audio(path)
    message = str(info.value)
    assert words in message and str(path) in message and "\n" not in message


def test_streamed_wav_with_unknown_size_is_not_called_truncated(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    write_wav(path, sine(440, 0.2, 16000))
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at:at + 4] = b"\xff\xff\xff\xff"  # what a writer to a pipe leaves
    path.write_bytes(bytes(data))
    assert len(read_audio(path)) > 0


def test_write_to_unwritable_place_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        write_wav(blocker / "a.wav", np.zeros(10, dtype=np.float32))
    assert os.path.isfile(blocker)
