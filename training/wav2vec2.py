"""wav2vec2 with "stable layer norm" (XLSR-53 large), as EmoTalk's two encoders use it.

A plain re-implementation of Hugging Face's `Wav2Vec2Model` (do_stable_layer_norm=True,
feat_extract_norm="layer", conv_bias=True, GELU everywhere) plus EmoTalk's change to its forward:
the 50 Hz CNN features are resampled to the 30 fps output *before* the transformer. Module names
give exactly the Hugging Face / official EmoTalk state_dict keys, so checkpoints load key for key:

    feature_extractor.conv_layers.{C}.{conv,layer_norm}   waveform -> (B, T_cnn, conv_dim) at 50 Hz
    feature_projection.{layer_norm,projection}           -> (B, T, hidden) after resampling
    encoder.pos_conv_embed.conv                          grouped conv, weight norm over the kernel dim
    encoder.layers.{L}.{attention,layer_norm,feed_forward,final_layer_norm}   pre-norm layers
    encoder.layer_norm                                   final norm
    masked_spec_embed, lm_head                           unused here; kept for the official keys

Differences from the official code: no attention maps are returned (it forced
output_attentions=True, which is what ran out of memory on long clips), attention goes through
F.scaled_dot_product_attention, there is no SpecAugment (the official forward never applied it)
and no layer drop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from .config import EncoderConfig

CNN_RATE = 50  # Hz: 16 kHz audio through the strides (5, 2, 2, 2, 2, 2, 2) = 320 samples
OUTPUT_FPS = 30  # the official model's frame rate
LAYER_NORM_EPS = 1e-5  # Hugging Face's layer_norm_eps for wav2vec2
WAVEFORM_NORM_EPS = 1e-7  # Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm


def normalize_waveform(audio: Tensor) -> Tensor:
    """Zero mean, unit variance per clip: what the official demo's Wav2Vec2Processor does.

    The XLSR checkpoints were trained on normalised input (the processors of both official
    encoders have do_normalize=True), and EmoTalk passes the processor's output to the encoders, so
    the backbone applies it itself: callers feed raw 16 kHz audio in [-1, 1].
    """
    mean = audio.mean(dim=-1, keepdim=True)
    var = audio.var(dim=-1, keepdim=True, unbiased=False)
    return (audio - mean) / torch.sqrt(var + WAVEFORM_NORM_EPS)


def linear_interpolation(features: Tensor, output_len: int) -> Tensor:
    """Resample (B, T, C) features to (B, output_len, C) over time, as the official code does."""
    resampled = F.interpolate(features.transpose(1, 2), size=output_len, mode="linear", align_corners=True)
    return resampled.transpose(1, 2)


class ConvLayer(nn.Module):
    """Conv1d -> LayerNorm over channels -> GELU (feat_extract_norm="layer")."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=True)
        self.layer_norm = nn.LayerNorm(out_dim, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x)


class FeatureExtractor(nn.Module):
    """Waveform (B, N) -> CNN features (B, T_cnn, conv_dim) at 50 Hz."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        dims = [1] + [cfg.conv_dim] * len(cfg.conv_kernels)
        self.conv_layers = nn.ModuleList(
            ConvLayer(dims[i], dims[i + 1], k, s)
            for i, (k, s) in enumerate(zip(cfg.conv_kernels, cfg.conv_strides, strict=True))
        )

    def forward(self, audio: Tensor) -> Tensor:
        x = audio[:, None, :]
        for layer in self.conv_layers:
            x = layer(x)
        return x.transpose(1, 2)


class FeatureProjection(nn.Module):
    def __init__(self, cfg: EncoderConfig, dropout: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dim, eps=LAYER_NORM_EPS)
        self.projection = nn.Linear(cfg.conv_dim, cfg.hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.projection(self.layer_norm(x)))


class PositionalConvEmbedding(nn.Module):
    """Relative position from a wide grouped convolution (kernel 128, 16 groups in XLSR).

    Weight norm over dim 2 as Hugging Face builds it, so the keys are
    `conv.parametrizations.weight.original0` (g, [1, 1, k]) and `.original1` (v).
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        k = cfg.pos_conv_kernel
        conv = nn.Conv1d(cfg.hidden, cfg.hidden, k, padding=k // 2, groups=cfg.pos_conv_groups)
        self.conv = weight_norm(conv, name="weight", dim=2)
        # An even kernel with padding k//2 yields one extra frame; drop the last (HF's SamePad).
        self.trim = 1 if k % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[..., : -self.trim]
        return F.gelu(y).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, hidden = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(batch, length, self.heads, hidden // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, hidden))


class FeedForward(nn.Module):
    def __init__(self, hidden: int, ffn: int, dropout: float):
        super().__init__()
        self.intermediate_dense = nn.Linear(hidden, ffn)
        self.output_dense = nn.Linear(ffn, hidden)
        self.intermediate_dropout = nn.Dropout(dropout)
        self.output_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.intermediate_dropout(F.gelu(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    """Pre-norm ("stable layer norm") transformer layer."""

    def __init__(self, cfg: EncoderConfig, dropout: float):
        super().__init__()
        self.attention = Attention(cfg.hidden, cfg.heads, dropout)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(cfg.hidden, eps=LAYER_NORM_EPS)
        self.feed_forward = FeedForward(cfg.hidden, cfg.ffn, dropout)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.dropout(self.attention(self.layer_norm(x)))
        return x + self.feed_forward(self.final_layer_norm(x))


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, dropout: float):
        super().__init__()
        self.pos_conv_embed = PositionalConvEmbedding(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg, dropout) for _ in range(cfg.layers))

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(x + self.pos_conv_embed(x))
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


class Wav2Vec2Model(nn.Module):
    """Raw 16 kHz audio (B, N) -> last hidden state (B, T, hidden) at the requested frame count."""

    def __init__(self, cfg: EncoderConfig, dropout: float = 0.1):
        super().__init__()
        self.cfg = cfg
        self.feature_extractor = FeatureExtractor(cfg)
        self.feature_projection = FeatureProjection(cfg, dropout)
        self.encoder = Encoder(cfg, dropout)
        # Unused by the forward pass; present so that official checkpoints load key for key.
        self.masked_spec_embed = nn.Parameter(torch.empty(cfg.hidden).uniform_())
        self.lm_head = nn.Linear(cfg.hidden, cfg.lm_head_vocab)

    def forward(self, audio: Tensor, frame_num: int | None = None) -> Tensor:
        """Encode at `frame_num` frames; None keeps 30/50 of the CNN frames, as the official code."""
        features = self.feature_extractor(normalize_waveform(audio))
        if frame_num is None:
            frame_num = int(features.shape[1] / CNN_RATE * OUTPUT_FPS)
        features = linear_interpolation(features, frame_num)
        return self.encoder(self.feature_projection(features))

