"""Model configuration: one dataclass for the whole EmoTalk family, saved as JSON beside the weights.

`large` is the official layout (two wav2vec2-large XLSR-53 encoders, 832-wide fusion); `small` is the
same structure with streaming encoders on log-mel features, trained by this project.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .blendshapes import NAMES
from .errors import UserError
from .input_level import MODES

RAVDESS_EMOTIONS: tuple[str, ...] = (
    "neutral", "calm", "happy", "sad", "angry", "fearful", "disgusted", "surprised",
)
# The official checkpoint's emotion head (r-f/wav2vec-english-speech-emotion-recognition).
OFFICIAL_EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

FORMAT_VERSION = 1


@dataclass
class EncoderConfig:
    """One audio encoder. `kind` is "wav2vec2" (the official backbone) or "streaming" (ours)."""

    kind: str
    hidden: int
    layers: int
    heads: int
    ffn: int
    # wav2vec2 only: the CNN feature extractor and positional convolution.
    conv_dim: int = 512
    conv_kernels: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_strides: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    lm_head_vocab: int = 32  # unused by the forward pass; present in official checkpoints
    # streaming only: log-mel front end, bounded attention and a causal positional convolution.
    n_mels: int = 80
    left_context: int = 100  # encoder frames (50 Hz) each attention layer sees in the past
    max_lookahead: int = 6  # encoder frames of future audio the first layer may see (training range)


@dataclass
class ModelConfig:
    family: str
    content: EncoderConfig
    emotion: EncoderConfig
    content_dim: int  # projection of content features, 512 in the official model
    emotion_dim: int  # second emotion projection, 256
    level_dim: int = 32
    person_dim: int = 32
    decoder_heads: int = 4
    decoder_ffn: int = 832
    decoder_layers: int = 1
    alibi_period: int = 30
    decoder_past: int = 0  # frames of decoder self-attention past; 0 = unbounded (official)
    lookahead: int = 2  # encoder frames of lookahead used at inference (streaming encoders)
    n_levels: int = 2
    n_persons: int = 24
    sample_rate: int = 16000
    fps: int = 30
    blendshapes: tuple[str, ...] = NAMES
    emotion_labels: tuple[str, ...] = RAVDESS_EMOTIONS
    emotion_temperature: float = 1.0  # divides the emotion logits: fitted on held-out voices (calibration)
    input_level: str = "raw"  # "agc": the audio passes `input_level.LevelNormaliser` first (gain-free)
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # provenance: corpus, seed, metrics

    def __post_init__(self) -> None:
        if self.input_level not in MODES:
            raise UserError(f"model config has input_level {self.input_level!r}, not one of {MODES}: "
                            "it was written by another version")
        if self.input_level == "agc" and self.content.kind != "streaming":
            # The engine normalises a stream once as it arrives; sliding windows would normalise again.
            raise UserError(f"input_level agc is for streaming encoders; family {self.family!r} takes raw input")

    @property
    def d_model(self) -> int:
        """Width of the fused decoder input: content + emotion + level + person (832 official)."""
        return self.content_dim + self.emotion_dim + self.level_dim + self.person_dim

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise UserError(f"model config has format_version {version}, this emotalk-stream reads "
                            f"{FORMAT_VERSION}: re-export the model with this version")
        data = dict(data)
        for key in ("content", "emotion"):
            enc = dict(data[key])
            for tup in ("conv_kernels", "conv_strides"):
                if tup in enc:
                    enc[tup] = tuple(enc[tup])
            data[key] = EncoderConfig(**enc)
        for tup in ("blendshapes", "emotion_labels"):
            data[tup] = tuple(data[tup])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"model config has unknown fields {unknown}: it was written by another version")
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> "ModelConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read model config {path}: {exc}") from exc
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError) as exc:
            raise UserError(f"model config {path} is malformed ({exc}): re-export the model") from exc


def large() -> ModelConfig:
    """The official EmoTalk layout (github.com/psyai-net/EmoTalk_release model.py; arXiv 2303.11089)."""
    w2v = EncoderConfig(kind="wav2vec2", hidden=1024, layers=24, heads=16, ffn=4096)
    return ModelConfig(
        family="large", content=w2v, emotion=dataclasses.replace(w2v),
        content_dim=512, emotion_dim=256, emotion_labels=OFFICIAL_EMOTIONS,
    )


def small() -> ModelConfig:
    """Streaming encoders on log-mel features; the bundled default model."""
    return ModelConfig(
        family="small",
        content=EncoderConfig(kind="streaming", hidden=192, layers=4, heads=4, ffn=384, left_context=100),
        emotion=EncoderConfig(kind="streaming", hidden=128, layers=3, heads=4, ffn=256, left_context=150),
        content_dim=128, emotion_dim=64, level_dim=16, person_dim=16,
        decoder_heads=4, decoder_ffn=224, decoder_past=60, input_level="agc",
        # Trained on look-aheads from 0 to 120 ms; run with none: its lip error there is within 2%
        # of the error at 80 ms (docs/results.md#real-voices), and the face trails the voice by 43 ms.
        lookahead=0,
    )


PRESETS = {"small": small, "large": large}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise UserError(f"unknown model config {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
