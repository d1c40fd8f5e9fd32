"""The clock arithmetic shared by the model and the streaming engine, free of PyTorch.

Audio is 16 kHz; log-mel frames are 25 ms windows every 10 ms, centred on their time; encoder
frames are 50 Hz (two mel frames, the wav2vec2 rate); output frames are at `fps`. The offline model
(`streaming_encoder.py`) and the streaming step (`engine/`) both count with these functions, so an
engine without PyTorch agrees with training to the frame.
"""
from __future__ import annotations

import math

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms mel window
MEL_HOP = 160  # 100 Hz mel frames
ENCODER_HOP = 2 * MEL_HOP  # 50 Hz encoder frames
POS_CONV_KERNEL = 15  # causal positional convolution of the streaming encoder


def frame_count(num_samples: int, sample_rate: int = SAMPLE_RATE, fps: int = 30) -> int:
    """Output frames for a clip, as the official demo counts them: ceil(seconds * fps), in exact
    integers. Offline inference, the engine and the streamer's frame clock all count with it, so
    every take of one file has the same frames."""
    return -(-num_samples * fps // sample_rate)


def mel_frames_for(num_samples: int) -> int:
    """Mel frames computable from `num_samples` (after the N_FFT/2 left padding)."""
    return max(0, (num_samples + N_FFT // 2 - N_FFT) // MEL_HOP + 1)


def encoder_frames_needed(frame_num: int, fps: int) -> int:
    """Encoder frames that output frames 0..frame_num-1 interpolate from."""
    if frame_num == 0:
        return 0
    return math.floor((frame_num - 1) * SAMPLE_RATE / ENCODER_HOP / fps) + 2


def samples_needed(encoder_frames: int) -> int:
    """Samples from which `encoder_frames` encoder frames are computable (one mel frame of look-ahead)."""
    last_mel = 2 * (encoder_frames - 1) + 1
    return last_mel * MEL_HOP + N_FFT // 2
