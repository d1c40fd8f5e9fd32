"""What a streaming step takes, returns and carries: named tensors, computed from the config alone.

Backends, the artifact manifest and the PyTorch step all describe the step with these specs, so
reading an artifact or running it on ONNX Runtime needs no model and no PyTorch. The hop grid
(`PREROLL`, `AUDIO_CONTEXT`) and the stream-end bookkeeping (`audio_end_frame`) live here for the
same reason: the `Stream` in front of any backend counts with them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from ..training.config import EncoderConfig, ModelConfig
from ..training.errors import UserError
from ..training.framing import (
    ENCODER_HOP, N_FFT, POS_CONV_KERNEL, encoder_frames_needed, frame_count, mel_frames_for, samples_needed,
)

ENCODER_FRAME_MS = 20  # one encoder frame: the unit of hops and look-aheads
REACH = 40  # samples a front-end frame needs past its 20 ms boundary (frame j: up to 320(j+1)+40)
AUDIO_CONTEXT = N_FFT // 2 + REACH  # 240 samples: the mel window's past plus that reach
PREROLL = ENCODER_HOP - REACH  # 280 zeros before a stream's first sample align the hops to the frames
NEVER = 2**62  # `audio_end` of a stream still receiving audio


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor of the step's interface; `shape` excludes the batch axis."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"  # numpy spelling; "int64" for counters
    ring_axis: int | None = None  # a ring state: the step returns only its new rows along this axis

    def as_dict(self) -> dict:
        data = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        return data if self.ring_axis is None else {**data, "ring_axis": self.ring_axis}


@dataclass(frozen=True)
class StepInterface:
    """The named tensors of a streaming step; shapes exclude the batch axis."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    states: tuple[TensorSpec, ...]

    def as_dict(self) -> dict:
        return {key: [spec.as_dict() for spec in getattr(self, key)] for key in ("inputs", "outputs", "states")}

    @classmethod
    def from_dict(cls, data: dict) -> "StepInterface":
        def specs(key: str) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(d["name"], tuple(d["shape"]), d["dtype"], d.get("ring_axis")) for d in data[key])
        return cls(specs("inputs"), specs("outputs"), specs("states"))


def state_input(name: str) -> str:
    """Graph input name of a state tensor (ONNX, TensorRT)."""
    return f"state_{name}"


def state_output(name: str) -> str:
    """Graph output name of a state tensor after the step (of a ring state: its new rows only)."""
    return f"next_{name}"


def ring_index(name: str) -> str:
    """Graph output name of where a ring state's new rows go along its ring axis (-1: nowhere)."""
    return f"at_{name}"


def graph_outputs(interface: "StepInterface") -> list[str]:
    """Every graph output in order: the step's outputs, each state's next value, each ring's indices."""
    return ([s.name for s in interface.outputs] + [state_output(s.name) for s in interface.states]
            + [ring_index(s.name) for s in interface.states if s.ring_axis is not None])


def frames_from_ms(value: int, what: str, minimum: int) -> int:
    """Milliseconds -> 20 ms encoder frames; refuse values off the grid."""
    if value % ENCODER_FRAME_MS or value < minimum * ENCODER_FRAME_MS:
        raise UserError(f"{what} {value} ms must be a multiple of {ENCODER_FRAME_MS} ms, at least "
                        f"{minimum * ENCODER_FRAME_MS} ms")
    return value // ENCODER_FRAME_MS


def frame_ratio(cfg: ModelConfig) -> Fraction:
    """Encoder frames per output frame (50 Hz / fps)."""
    return Fraction(cfg.sample_rate, ENCODER_HOP) / cfg.fps


def output_slots(hop_frames: int, ratio: Fraction) -> int:
    """Most output frames one step can finish, over every phase of the encoder/output frame grid.

    Frame k is ready once encoder frame floor(k * ratio) + 1 exists; a step adds `hop_frames`
    encoder frames after `before` (the grid repeats every `ratio.numerator` encoder frames).
    """
    def finished(before: int) -> int:
        last = int((before + hop_frames) / ratio) + 2
        return sum(1 for k in range(last) if before < math.floor(k * ratio) + 1 <= before + hop_frames)
    return max(finished(before) for before in range(ratio.numerator + 1))


def input_specs(cfg: ModelConfig, hop_samples: int) -> list[TensorSpec]:
    """Per-step inputs of every streaming step: a hop of audio and the stream's controls."""
    return [
        TensorSpec("audio", (hop_samples,)),
        TensorSpec("level", ()),
        TensorSpec("person", (cfg.n_persons,)),
        TensorSpec("emotion", (len(cfg.emotion_labels),)),
        TensorSpec("emotion_strength", ()),
        TensorSpec("audio_end", (), "int64"),
    ]


def output_specs(cfg: ModelConfig, slots: int) -> list[TensorSpec]:
    """Per-step outputs: up to `slots` frames (the first `n_frames` are finished) and the voice's emotion."""
    return [
        TensorSpec("weights", (slots, len(cfg.blendshapes))),
        TensorSpec("n_frames", (), "int64"),
        TensorSpec("emotion_logits", (len(cfg.emotion_labels),)),
    ]


def encoder_state_specs(enc: EncoderConfig, prefix: str, lookahead: int, ring: bool) -> list[TensorSpec]:
    """What one streaming encoder carries: its last mel frame, the positional convolution's past,
    the look-ahead delay line, each layer's keys and values, and its last output frame.

    `ring`: keys and values are rings (a step returns only its new frames, which the backend writes
    in place over the oldest), not whole tensors the step copies every hop."""
    head, axis = enc.hidden // enc.heads, 1 if ring else None
    specs = [TensorSpec(f"{prefix}mel", (1, enc.n_mels)), TensorSpec(f"{prefix}pos", (POS_CONV_KERNEL - 1, enc.hidden))]
    if lookahead:
        specs.append(TensorSpec(f"{prefix}delay", (lookahead, enc.hidden)))
    for i in range(enc.layers):
        cached = enc.left_context + (lookahead if i == 0 else 0)
        specs += [TensorSpec(f"{prefix}{kind}{i}", (enc.heads, cached, head), ring_axis=axis) for kind in "kv"]
    specs.append(TensorSpec(f"{prefix}tail", (1, enc.hidden)))
    return specs


def small_state_specs(cfg: ModelConfig, lookahead: int, ring: bool) -> list[TensorSpec]:
    """The whole `small` step's state: counters, audio context, both encoders, the decoder's past,
    the running emotion mean and the recent one (`ring`: as in `encoder_state_specs`)."""
    head, axis = cfg.d_model // cfg.decoder_heads, 1 if ring else None
    specs = [TensorSpec("step", (), "int64"), TensorSpec("next_frame", (), "int64"),
             TensorSpec("audio_context", (AUDIO_CONTEXT,))]
    specs += encoder_state_specs(cfg.content, "content_", lookahead, ring)
    specs += encoder_state_specs(cfg.emotion, "emotion_", lookahead, ring)
    for i in range(cfg.decoder_layers):
        shape = (cfg.decoder_heads, cfg.decoder_past, head)
        specs += [TensorSpec(f"dec_{kind}{i}", shape, ring_axis=axis) for kind in "kv"]
    specs += [TensorSpec("emo_sum", (cfg.emotion.hidden,)), TensorSpec("emo_count", ()),
              TensorSpec("emo_recent", (cfg.emotion.hidden,)), TensorSpec("emo_recent_weight", ())]
    return specs


def small_interface(cfg: ModelConfig, hop_frames: int, lookahead: int, ring: bool) -> StepInterface:
    """The exact `small` step's tensors for a config, hop and look-ahead (`ring`: as in
    `encoder_state_specs`)."""
    check_streamable(cfg, hop_frames, lookahead)
    return StepInterface(tuple(input_specs(cfg, hop_frames * ENCODER_HOP)),
                         tuple(output_specs(cfg, output_slots(hop_frames, frame_ratio(cfg)))),
                         tuple(small_state_specs(cfg, lookahead, ring)))


def check_streamable(cfg: ModelConfig, hop_frames: int, lookahead: int) -> None:
    """Refuse settings the exact step cannot reproduce, naming the allowed range."""
    if cfg.content.kind != "streaming" or cfg.emotion.kind != "streaming":
        raise UserError(f"model family {cfg.family!r} has no streaming encoders: it streams with sliding windows")
    if cfg.decoder_past <= 0:
        raise UserError("the model's decoder has an unbounded past (decoder_past 0): it cannot stream in constant memory")
    if hop_frames < 1:
        raise UserError(f"hop must be at least one encoder frame ({ENCODER_FRAME_MS} ms)")
    limit = min(cfg.content.max_lookahead, cfg.emotion.max_lookahead)
    if not 0 <= lookahead <= limit:
        raise UserError(f"look-ahead {lookahead * ENCODER_FRAME_MS} ms is outside what this model was trained for "
                        f"(0 to {limit * ENCODER_FRAME_MS} ms in steps of {ENCODER_FRAME_MS} ms)")


def audio_end_frame(num_samples: int, lookahead: int, fps: int, sample_rate: int) -> int:
    """Front-end frames offline inference computes for a clip of `num_samples`: a finished stream
    masks later frames, so its last frames match offline inference exactly."""
    frames = frame_count(num_samples, sample_rate, fps)
    padded = max(num_samples, samples_needed(encoder_frames_needed(frames, fps) + lookahead))
    return (mel_frames_for(padded) - 2) // 2 + 1
