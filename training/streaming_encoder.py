"""The `small` family's audio encoder: log-mel features and a transformer built to stream.

Every part has a bounded view of the future, so a streaming engine can reproduce the offline output
exactly from a finite cache:
- log-mel frames (25 ms window, 10 ms hop) centred on their time, computed by a fixed DFT
  convolution (exportable to ONNX, cacheable);
- a stride-2 convolution to 50 Hz (one frame of mel look-ahead: 22.5 ms past the frame's time);
- a causal depthwise positional convolution (wav2vec2's is +-64 frames; ours sees no future);
- attention over `left_context` past frames; only the first layer also sees `lookahead` future
  frames, so the look-ahead does not compound with depth;
- the 50 Hz features are resampled to the 30 fps output by linear interpolation at fixed times.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchaudio.functional import melscale_fbanks

from .config import EncoderConfig
from .framing import (
    ENCODER_HOP, MEL_HOP, N_FFT, POS_CONV_KERNEL, SAMPLE_RATE, encoder_frames_needed, mel_frames_for, samples_needed,
)

LOG_FLOOR = 1e-7
ATTENTION_BLOCK = 256  # query frames per attention call: memory stays linear in clip length


class LogMel(nn.Module):
    """Waveform (B, N) -> log-mel (B, M, n_mels); frame m is centred on sample m * MEL_HOP."""

    def __init__(self, n_mels: int):
        super().__init__()
        window = torch.hann_window(N_FFT, periodic=True)
        n_freqs = N_FFT // 2 + 1
        t = torch.arange(N_FFT)
        f = torch.arange(n_freqs)
        phase = 2 * math.pi * f[:, None] * t[None, :] / N_FFT
        basis = torch.cat([torch.cos(phase), torch.sin(phase)]) * window  # (2F, N_FFT)
        self.register_buffer("dft", basis[:, None, :].float(), persistent=False)
        fbank = melscale_fbanks(n_freqs, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE)  # (F, n_mels)
        self.register_buffer("fbank", fbank.float(), persistent=False)

    frames_for = staticmethod(mel_frames_for)

    def forward(self, audio: Tensor) -> Tensor:
        return self.uncentred(F.pad(audio, (N_FFT // 2, 0)))

    def uncentred(self, audio: Tensor) -> Tensor:
        """Log-mel of windows starting at sample 0, 160, ... of `audio` (no centring pad): the
        streaming engine feeds it its own context buffer."""
        return self._log_mel(F.conv1d(audio[:, None, :], self.dft, stride=MEL_HOP).transpose(1, 2))

    def windowed(self, windows: Tensor) -> Tensor:
        """Log-mel of windows (B, M, N_FFT) already cut from the audio: on the few frames of a
        streaming step a matrix product is cheaper than the convolution."""
        return self._log_mel(windows @ self.dft[:, 0].T)

    def _log_mel(self, spectrum: Tensor) -> Tensor:
        """(B, M, 2F) cosine and sine parts -> (B, M, n_mels) log-mel."""
        real, imag = spectrum.chunk(2, dim=-1)
        mel = torch.matmul(real.square() + imag.square(), self.fbank)
        return (torch.log(mel.clamp(min=LOG_FLOOR)) + 4.0) / 5.0


def local_attention_mask(queries: Tensor, keys: Tensor, left: int, right: int) -> Tensor:
    """Boolean (Q, K), True where frame i may attend frame j: i - left <= j <= i + right."""
    distance = keys[None, :] - queries[:, None]
    return (distance >= -left) & (distance <= right)


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer (as wav2vec2's stable-layer-norm variant)."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float = 0.1):
        super().__init__()
        self.heads = heads
        self.layer_norm = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out_proj = nn.Linear(hidden, hidden)
        self.final_layer_norm = nn.LayerNorm(hidden)
        self.intermediate_dense = nn.Linear(hidden, ffn)
        self.output_dense = nn.Linear(ffn, hidden)
        self.dropout = nn.Dropout(dropout)

    def attend(self, x: Tensor, left: int, right: int) -> Tensor:
        """Attention over [i - left, i + right], computed block by block over the queries."""
        batch, length, hidden = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4)
        frames = torch.arange(length, device=x.device)
        blocks = []
        for start in range(0, length, ATTENTION_BLOCK):
            stop = min(length, start + ATTENTION_BLOCK)
            first, last = max(0, start - left), min(length, stop + right)
            mask = local_attention_mask(frames[start:stop], frames[first:last], left, right)
            blocks.append(F.scaled_dot_product_attention(
                q[:, :, start:stop], k[:, :, first:last], v[:, :, first:last], attn_mask=mask))
        out = torch.cat(blocks, dim=2)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, hidden))

    def forward(self, x: Tensor, left: int, right: int) -> Tensor:
        x = x + self.dropout(self.attend(self.layer_norm(x), left, right))
        return x + self.dropout(self.output_dense(F.gelu(self.intermediate_dense(self.final_layer_norm(x)))))


def resample_to_frames(hidden: Tensor, frame_num: int, fps: int) -> Tensor:
    """50 Hz features (B, J, C) -> (B, frame_num, C): output frame k at time k / fps.

    Fixed-rate linear interpolation (not the official align_corners resize, which depends on the
    clip's length and so cannot stream).
    """
    position = torch.arange(frame_num, device=hidden.device, dtype=torch.float64) * (SAMPLE_RATE / ENCODER_HOP / fps)
    lower = position.floor().long()
    frac = (position - lower).to(hidden.dtype)[None, :, None]
    last = hidden.shape[1] - 1
    low = hidden[:, lower.clamp(max=last)]
    high = hidden[:, (lower + 1).clamp(max=last)]
    return low + (high - low) * frac


class StreamingEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, fps: int = 30):
        super().__init__()
        self.cfg = cfg
        self.fps = fps
        self.mel = LogMel(cfg.n_mels)
        self.subsample = nn.Conv1d(cfg.n_mels, cfg.hidden, kernel_size=3, stride=2)
        self.input_norm = nn.LayerNorm(cfg.hidden)
        self.pos_conv = nn.Conv1d(cfg.hidden, cfg.hidden, POS_CONV_KERNEL, groups=cfg.hidden)
        self.layers = nn.ModuleList(EncoderLayer(cfg.hidden, cfg.heads, cfg.ffn) for _ in range(cfg.layers))
        self.layer_norm = nn.LayerNorm(cfg.hidden)
        self.dropout = nn.Dropout(0.1)

    def frontend(self, audio: Tensor) -> Tensor:
        """(B, N) -> (B, J, hidden) 50 Hz features before the transformer layers."""
        mel = self.mel(audio).transpose(1, 2)  # (B, n_mels, M)
        x = self.subsample(F.pad(mel, (1, 0)))  # frame j sees mel frames 2j-1, 2j, 2j+1
        x = self.input_norm(F.gelu(x).transpose(1, 2))
        pos = self.pos_conv(F.pad(x.transpose(1, 2), (POS_CONV_KERNEL - 1, 0)))
        return x + F.gelu(pos).transpose(1, 2)

    def forward(self, audio: Tensor, frame_num: int, lookahead: int | None = None) -> Tensor:
        """Offline pass, identical to streaming at the same look-ahead: (B, N) -> (B, frame_num, hidden)."""
        lookahead = self.cfg.max_lookahead if lookahead is None else lookahead
        frames = encoder_frames_needed(frame_num, self.fps)
        # Silence after the end, as a stream's flush supplies, so every needed frame exists.
        shortfall = samples_needed(frames + lookahead) - audio.shape[-1]
        if shortfall > 0:
            audio = F.pad(audio, (0, shortfall))
        x = self.dropout(self.frontend(audio))
        for i, layer in enumerate(self.layers):
            x = layer(x, self.cfg.left_context, lookahead if i == 0 else 0)
        return resample_to_frames(self.layer_norm(x), frame_num, self.fps)
