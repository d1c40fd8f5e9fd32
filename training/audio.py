"""Audio files in and out: 16 kHz mono float32 in [-1, 1], the engine's contract.

Every command that takes a sound file (inference, evaluation, the streamer's file source, the
Live Link Face loader) reads it here, so that one place turns a bad file into one clear error.
numpy and soundfile only: tools that must run without PyTorch read files here too.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import UserError

SAMPLE_RATE = 16000
MIN_RATE, MAX_RATE = 8000, 192000  # the input rates every source takes (files, pipes, microphones)
# The file resampler's kernel is (target/gcd) x (2 x width + rate/gcd), about (target/gcd) x (rate/gcd):
# every rate in use reduces to under 300 000 entries (11025 Hz: 640 x 455), a rate that does not
# reduce (22051 Hz) would need GBs.
MAX_RESAMPLE_KERNEL = 1_000_000
# Windowed-sinc parameters of the file resampler: torchaudio's defaults, so files read as before.
LOWPASS_FILTER_WIDTH = 6  # zero crossings of the sinc on each side
ROLLOFF = 0.99  # cutoff as a fraction of the lower Nyquist frequency
RESAMPLE_BLOCK = 1 << 20  # kernel-window entries (4 MB of float32) copied out per matrix product
READ_BLOCK_FRAMES = 1 << 20
# WAV writers that stream (ffmpeg to a pipe, crashed recorders) leave these as the data size.
_UNKNOWN_WAV_SIZES = (0, 0xFFFFFFFF)


def _check_wav_complete(path: Path) -> None:
    """Refuse a RIFF/WAVE file whose data chunk is shorter than its header says.

    libsndfile silently reads what is there, which would misalign audio and labels.
    """
    with path.open("rb") as f:
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return
        f.seek(0, 2)
        size = f.tell()
        position = 12
        while position + 8 <= size:
            f.seek(position)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                present = size - position - 8
                if length not in _UNKNOWN_WAV_SIZES and present < length:
                    raise UserError(f"audio file {path} is truncated: its header promises {length} bytes "
                                    f"of samples but only {present} are present; copy or export it again")
                return
            position += 8 + length + (length & 1)


@contextlib.contextmanager
def _c_stderr_silenced() -> Iterator[None]:
    """Mute file descriptor 2 while libsndfile probes a file.

    Its MP3 decoder (libmpg123) prints warnings straight to fd 2 when probing a file that is not
    audio, which would break the one-line error contract; our UserError names the problem.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 to protect
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def rescale_count(count: int, to_rate: int, from_rate: int) -> int:
    """`count` samples at `from_rate` -> round(count x to_rate / from_rate), half up, in exact
    integers: the one rounding of sample and frame counts between rates, so that a file, a pipe and
    the frame clock agree to the sample."""
    return (2 * count * to_rate + from_rate) // (2 * from_rate)


def _check_rate(path: Path, rate: int, target: int) -> None:
    """Refuse a rate no recorder writes (a corrupt header's) before it costs gigabytes to resample."""
    common = math.gcd(rate, target)
    if MIN_RATE <= rate <= MAX_RATE and (rate // common) * (target // common) <= MAX_RESAMPLE_KERNEL:
        return
    raise UserError(f"audio file {path} has a sample rate of {rate} Hz, not a standard one from {MIN_RATE} to "
                    f"{MAX_RATE} Hz (such as 16000, 44100 or 48000): convert it, e.g. "
                    f"ffmpeg -i {path} -ar {target} converted.wav")


@functools.lru_cache(maxsize=8)
def _resample_kernel(rate: int, target: int) -> tuple[np.ndarray, int]:
    """The polyphase kernel for `rate` -> `target`, built once per rate pair, and its half-width.

    With orig, new the rates over their gcd, row j weighs the `2 x width + orig` input samples
    around outputs j, j + new, j + 2 new, ...: a sinc with its cutoff at ROLLOFF of the lower Nyquist
    frequency, under a Hann window spanning LOWPASS_FILTER_WIDTH zero crossings on each side. The
    same filter as torchaudio's default ("sinc_interp_hann"), built in float64, stored in float32.
    """
    common = math.gcd(rate, target)
    orig, new = rate // common, target // common
    base = min(orig, new) * ROLLOFF  # twice the cutoff, in units of gcd Hz
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / base)  # input samples a side the window reaches
    # Time from output j to each input sample, in zero crossings of the sinc (1 / (base x gcd) s).
    offsets = np.arange(-width, width + orig, dtype=np.float64) / orig
    t = (-np.arange(new, dtype=np.float64)[:, None] / new + offsets[None, :]) * base
    t = np.clip(t, -LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = np.cos(t * (math.pi / (2 * LOWPASS_FILTER_WIDTH))) ** 2
    kernel = np.sinc(t) * window * (base / orig)
    return kernel.astype(np.float32), width


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """(N,) float32 at `rate` -> ceil(N x target / rate) float32 samples at `target`.

    Output k = new x b + j is row j of the kernel dotted with the input window that starts at
    orig x b in the signal padded by `width` zeros in front and `width + orig` behind: a strided
    convolution, done as matrix products over blocks of windows so that memory stays bounded.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if rate == target:
        return audio.copy()
    kernel, width = _resample_kernel(rate, target)
    common = math.gcd(rate, target)
    orig, new = rate // common, target // common
    length = -(-new * len(audio) // orig)
    windows = -(-length // new)  # each window gives `new` outputs
    padded = np.zeros(len(audio) + 2 * width + orig, dtype=np.float32)
    padded[width:width + len(audio)] = audio
    views = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1])[::orig][:windows]
    out = np.empty((windows, new), dtype=np.float32)
    step = max(1, RESAMPLE_BLOCK // kernel.shape[1])
    weights = kernel.T
    for start in range(0, windows, step):
        # Overlapping windows are copied out first: BLAS takes only non-overlapping rows.
        block = np.ascontiguousarray(views[start:start + step])
        np.matmul(block, weights, out=out[start:start + step])
    return out.reshape(-1)[:length]


def _read_blocks(handle: sf.SoundFile) -> np.ndarray:
    """Every frame as (N, channels) float32, a block at a time until the data ends: a whole read
    allocates the header's frame count up front, 50 GB for a corrupt FLAC header."""
    blocks = []
    while len(block := handle.read(READ_BLOCK_FRAMES, dtype="float32", always_2d=True)):
        blocks.append(block)
    return np.concatenate(blocks) if blocks else np.zeros((0, handle.channels), np.float32)


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any file soundfile reads, any rate and channel count -> (N,) float32 mono in [-1, 1]."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"audio file {path} does not exist: check the path")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not an audio file: give the path of a WAV/FLAC/OGG file")
    if path.stat().st_size == 0:
        raise UserError(f"audio file {path} is empty (0 bytes): record or export it again")
    try:
        _check_wav_complete(path)
    except OSError as exc:
        raise UserError(f"cannot open audio file {path} ({exc.strerror}): check its permissions") from exc
    try:
        with _c_stderr_silenced():
            handle = sf.SoundFile(str(path))
        with handle:
            rate = handle.samplerate
            _check_rate(path, rate, sample_rate)
            data = _read_blocks(handle)
    except (sf.SoundFileError, RuntimeError) as exc:
        detail = str(getattr(exc, "error_string", exc)).rstrip(".")
        if "does not exist" in detail:  # libsndfile's words for bytes no decoder recognises
            detail = "no decoder recognises the data"
        raise UserError(f"cannot read {path} as audio ({detail}): the file is corrupt, truncated or not "
                        f"in a format soundfile reads (WAV, FLAC, OGG, MP3); convert it to WAV") from exc
    if data.shape[0] == 0:
        raise UserError(f"audio file {path} has no samples: record or export it again")
    # Cleaned before mixing and resampling: inf - inf or huge floats would warn on stderr, and a NaN
    # would spread over the resampling filter's width.
    mono = np.clip(np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0).mean(axis=1)
    if rate != sample_rate:
        mono = resample(mono, rate, sample_rate)
        # resample rounds the length up (as torchaudio does); half up is the streaming resampler's,
        # so a file and the same audio on a pipe give the same samples and frames.
        mono = mono[:rescale_count(len(data), sample_rate, rate)]
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)  # the resampler may overshoot a little


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono (N,) or (N, channels) audio in [-1, 1] as 16-bit PCM WAV (what every player reads)."""
    path = Path(path)
    samples = np.clip(np.nan_to_num(np.asarray(audio, dtype=np.float32)), -1.0, 1.0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), samples, sample_rate, subtype="PCM_16", format="WAV")
    except (OSError, sf.SoundFileError, RuntimeError) as exc:
        raise UserError(f"cannot write {path} ({exc}): check the folder exists and is writable") from exc
