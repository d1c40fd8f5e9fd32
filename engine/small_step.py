"""One streaming step of the `small` model: a hop of audio in, finished frames out, state carried.

The step is an `nn.Module` whose every input and output is a tensor with a static shape apart from
the batch axis, so the same code runs in PyTorch and exports to ONNX (and from there to TensorRT).
It reproduces the offline model exactly (tests/test_engine.py) because every part of `small` has
a bounded view; the state is what each part remembers of the past:

- `audio`: the last 240 samples (the mel window reaches 200 samples back, and a front-end frame
  40 samples past its 20 ms boundary);
- per encoder, `mel`: the last log-mel frame (the stride-2 convolution needs mel 2j-1..2j+1);
  `pos`: the last 14 front-end frames (the causal positional convolution); `delay`: the last
  `lookahead` front-end frames, which the first layer may only answer once their future arrived;
  `k{i}`/`v{i}`: keys and values of each attention layer over its left context (+ look-ahead);
  `tail`: the last encoder frame (output frames interpolate between two encoder frames);
- `dec_k{i}`/`dec_v{i}`: the decoder's self-attention keys and values over its bounded past;
- `emo_sum`/`emo_count`: running mean of the emotion features, for the voice's emotion estimate;
- `step`/`next_frame`: counters, so each stream of a batch may be at its own phase.

Frame bookkeeping: step s (hop of h encoder frames, look-ahead L) computes front-end frames
hs-1 .. hs+h-2 (frame j needs samples up to 320j+360) and encoder output frames L earlier. Its
hops are shifted by `PREROLL` = 280 samples (the stream starts with 280 zeros), so step s ends at
sample 320h(s+1)-280, exactly where its last frame's audio ends: no frame waits for a hop it does
not need. Output
frame k (at k/fps) interpolates encoder frames floor(k*50/fps) and the next; it is emitted by the
first step that has both. Work per step is constant: nothing grows with the stream.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..training.config import ModelConfig
from ..training.errors import UserError
from ..training.framing import ENCODER_HOP, POS_CONV_KERNEL
from ..training.model import EmoTalk, blend_to_prototype, shift_to_prototype
from ..training.streaming_encoder import EncoderLayer, StreamingEncoder
from .interface import (
    AUDIO_CONTEXT, StepInterface, TensorSpec, check_streamable, encoder_state_specs, frame_ratio, input_specs, output_slots,
    output_specs, small_state_specs,
)

MASK = -3.0e4  # additive attention mask: exp() is 0 in fp32 and it still fits fp16


def _masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """(B, H, Q, D) attention with an additive (B or 1, 1 or H, Q, K) mask, merged back to (B, Q, H*D)."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    batch, heads, length, dim = out.shape
    return out.transpose(1, 2).reshape(batch, length, heads * dim)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _local_mask(key_first: Tensor, n_keys: int, query_first: Tensor, n_queries: int,
                left: int, right: int, end: Tensor) -> Tensor:
    """(B, 1, Q, K) additive mask: query i sees keys in [i - left, i + right] that exist (0 <= j < end)."""
    keys = key_first[:, None] + torch.arange(n_keys, device=key_first.device)
    queries = query_first[:, None] + torch.arange(n_queries, device=key_first.device)
    distance = keys[:, None, :] - queries[:, :, None]
    exists = (keys >= 0) & (keys < end[:, None])
    ok = (distance >= -left) & (distance <= right) & exists[:, None, :]
    return torch.where(ok, 0.0, MASK)[:, None]


class EncoderStep(nn.Module):
    """Streaming view of one `StreamingEncoder`: a hop of audio -> `hop_frames` encoder frames."""

    def __init__(self, encoder: StreamingEncoder, prefix: str, hop_frames: int, lookahead: int):
        super().__init__()
        self.encoder = encoder
        self.prefix = prefix
        self.hop = hop_frames
        self.lookahead = lookahead
        self.left = encoder.cfg.left_context

    def state_specs(self) -> list[TensorSpec]:
        return encoder_state_specs(self.encoder.cfg, self.prefix, self.lookahead)

    def frontend(self, window: Tensor, first_mel: Tensor, mel_cache: Tensor, pos_cache: Tensor,
                 first_frame: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """New front-end frames (B, h, hidden) as `StreamingEncoder.frontend` computes them offline."""
        enc = self.encoder
        mel = enc.mel.uncentred(window)  # (B, 2h, n_mels): the window is exactly their samples
        mel_index = first_mel[:, None] + torch.arange(mel.shape[1], device=mel.device)
        mel = torch.where((mel_index >= 0)[..., None], mel, 0.0)  # offline pads frame -1 with zeros
        mels = torch.cat([mel_cache, mel], dim=1)  # (B, 2h + 1, n_mels)
        x = enc.input_norm(F.gelu(enc.subsample(mels.transpose(1, 2))).transpose(1, 2))
        frames = first_frame[:, None] + torch.arange(self.hop, device=x.device)
        x = torch.where((frames >= 0)[..., None], x, 0.0)  # the positional conv's zero padding
        positions = torch.cat([pos_cache, x], dim=1)
        pos = enc.pos_conv(positions.transpose(1, 2)).transpose(1, 2)
        return x + F.gelu(pos), mels[:, -1:], positions[:, -(POS_CONV_KERNEL - 1):]

    def attend(self, layer: EncoderLayer, queries: Tensor, keys: Tensor, k_cache: Tensor, v_cache: Tensor,
               key_first: Tensor, query_first: Tensor, right: int, end: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One layer on `queries` (residual stream) with new key frames `keys` after the cache."""
        hidden, heads = queries.shape[-1], layer.heads
        w, b = layer.qkv.weight, layer.qkv.bias
        q = F.linear(layer.layer_norm(queries), w[:hidden], b[:hidden])
        kv = F.linear(layer.layer_norm(keys), w[hidden:], b[hidden:])
        k_all = torch.cat([k_cache, _split_heads(kv[..., :hidden], heads)], dim=2)
        v_all = torch.cat([v_cache, _split_heads(kv[..., hidden:], heads)], dim=2)
        mask = _local_mask(key_first, k_all.shape[2], query_first, queries.shape[1], self.left, right, end)
        x = queries + layer.out_proj(_masked_attention(_split_heads(q, heads), k_all, v_all, mask))
        x = x + layer.output_dense(F.gelu(layer.intermediate_dense(layer.final_layer_norm(x))))
        cached = k_cache.shape[2]
        return x, k_all[:, :, -cached:], v_all[:, :, -cached:]

    def forward(self, window: Tensor, step: Tensor, end: Tensor, states: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns encoder frames (hs-2-L .. hs+h-2-L) = the previous tail + h new, and the new state."""
        p, h, lookahead = self.prefix, self.hop, self.lookahead
        first = h * step - 1  # first new front-end frame
        new: dict[str, Tensor] = {}
        x, new[f"{p}mel"], new[f"{p}pos"] = self.frontend(window, 2 * first, states[f"{p}mel"], states[f"{p}pos"], first)
        keys = x
        if lookahead:
            delayed = torch.cat([states[f"{p}delay"], x], dim=1)
            x, new[f"{p}delay"] = delayed[:, :h], delayed[:, h:]
        query_first = first - lookahead
        for i, layer in enumerate(self.encoder.layers):
            right = lookahead if i == 0 else 0
            key_first = (first if i == 0 else query_first) - (self.left + right)
            x, new[f"{p}k{i}"], new[f"{p}v{i}"] = self.attend(
                layer, x, keys if i == 0 else x, states[f"{p}k{i}"], states[f"{p}v{i}"],
                key_first, query_first, right, end)
        x = torch.cat([states[f"{p}tail"], self.encoder.layer_norm(x)], dim=1)
        new[f"{p}tail"] = x[:, -1:]
        return x, new


class SmallStreamingStep(nn.Module):
    """The whole `small` model as one streaming step over a batch of independent streams."""

    def __init__(self, model: EmoTalk, hop_frames: int, lookahead: int):
        super().__init__()
        cfg = model.cfg
        check_streamable(cfg, hop_frames, lookahead)
        decoder_layer = model.transformer_decoder.layers[0]
        if decoder_layer.norm_first or decoder_layer.activation is not F.relu:
            raise UserError("the streaming decoder supports the post-norm ReLU decoder layer of EmoTalk only")
        self.model = model
        self.cfg: ModelConfig = cfg
        self.hop_frames = hop_frames
        self.lookahead = lookahead
        self.ratio = frame_ratio(cfg)
        self.slots = output_slots(hop_frames, self.ratio)
        self.content = EncoderStep(model.audio_encoder_cont, "content_", hop_frames, lookahead)
        self.emotion = EncoderStep(model.audio_encoder_emo.backbone, "emotion_", hop_frames, lookahead)
        past, heads = cfg.decoder_past, cfg.decoder_heads
        distance = past + torch.arange(self.slots)[:, None] - torch.arange(past + self.slots)[None, :]
        slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / heads) for i in range(heads)])
        bias = -slopes[:, None, None] * torch.div(distance, cfg.alibi_period, rounding_mode="floor").clamp(min=0)
        bias = bias.masked_fill((distance < 0) | (distance > past), MASK)
        self.register_buffer("decoder_bias", bias[None], persistent=False)  # (1, H, slots, past + slots)

    @property
    def hop_samples(self) -> int:
        return self.hop_frames * ENCODER_HOP

    def input_specs(self) -> list[TensorSpec]:
        return input_specs(self.cfg, self.hop_samples)

    def output_specs(self) -> list[TensorSpec]:
        return output_specs(self.cfg, self.slots)

    def state_specs(self) -> list[TensorSpec]:
        return small_state_specs(self.cfg, self.lookahead)

    def interpolate(self, frames: Tensor, low: Tensor, frac: Tensor) -> Tensor:
        """Output-frame features from encoder frames (B, h + 1, C) at window positions low + frac."""
        last = frames.shape[1] - 1
        index = low.clamp(0, last)[..., None].expand(-1, -1, frames.shape[-1])
        upper = (low + 1).clamp(0, last)[..., None].expand(-1, -1, frames.shape[-1])
        below, above = frames.gather(1, index), frames.gather(1, upper)
        return below + (above - below) * frac[..., None]

    def decode(self, tgt: Tensor, memory: Tensor, next_frame: Tensor, n_frames: Tensor,
               states: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The transformer decoder on this step's slots, attending to its cached past."""
        past = self.cfg.decoder_past
        key_frames = next_frame[:, None] - past + torch.arange(past + self.slots, device=tgt.device)
        mask = self.decoder_bias + torch.where(key_frames >= 0, 0.0, MASK)[:, None, None, :]
        keep = (torch.arange(past, device=tgt.device)[None, :] + n_frames[:, None])[:, None, :, None]
        new: dict[str, Tensor] = {}
        x = tgt
        for i, layer in enumerate(self.model.transformer_decoder.layers):
            attn, d = layer.self_attn, x.shape[-1]
            q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).split(d, dim=-1)
            k_all = torch.cat([states[f"dec_k{i}"], _split_heads(k, attn.num_heads)], dim=2)
            v_all = torch.cat([states[f"dec_v{i}"], _split_heads(v, attn.num_heads)], dim=2)
            x = layer.norm1(x + attn.out_proj(_masked_attention(_split_heads(q, attn.num_heads), k_all, v_all, mask)))
            cross = layer.multihead_attn  # each frame attends only its own emotion frame: softmax = 1
            value = F.linear(memory, cross.in_proj_weight[2 * d:], cross.in_proj_bias[2 * d:])
            x = layer.norm2(x + cross.out_proj(value))
            x = layer.norm3(x + layer.linear2(F.relu(layer.linear1(x))))
            index = keep.expand(-1, k_all.shape[1], -1, k_all.shape[3])
            new[f"dec_k{i}"], new[f"dec_v{i}"] = k_all.gather(2, index), v_all.gather(2, index)
        return x, new

    def forward(self, audio: Tensor, level: Tensor, person: Tensor, emotion: Tensor, emotion_strength: Tensor,
                audio_end: Tensor, states: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        model = self.model
        step, next_frame = states["step"], states["next_frame"]
        window = torch.cat([states["audio_context"], audio], dim=1)
        new: dict[str, Tensor] = {"step": step + 1, "audio_context": window[:, -AUDIO_CONTEXT:]}
        content, content_state = self.content(window, step, audio_end, states)
        emo, emotion_state = self.emotion(window, step, audio_end, states)
        new.update(content_state)
        new.update(emotion_state)

        # Output frames k = next_frame + i whose two encoder frames exist; window frame 0 = hs-2-L.
        ratio = self.ratio
        window_first = self.hop_frames * step - 2 - self.lookahead
        frames = next_frame[:, None] + torch.arange(self.slots, device=audio.device)
        scaled = frames * ratio.numerator
        low = torch.div(scaled, ratio.denominator, rounding_mode="floor")
        frac = (scaled - low * ratio.denominator).to(audio.dtype) / ratio.denominator
        ready = low + 1 <= window_first[:, None] + self.hop_frames
        n_frames = ready.sum(dim=1)
        offset = low - window_first[:, None]
        content = model.audio_feature_map_cont(self.interpolate(content, offset, frac))
        emo_hidden = self.interpolate(emo, offset, frac)
        memory = model.audio_feature_map_emo(emo_hidden)
        counted = ready.to(audio.dtype)
        # Each frame's running mean of the emotion features over the stream so far (the map is
        # affine, so mapping the mean gives the mean memory): the baseline the override shifts.
        seen = states["emo_sum"][:, None, :] + (emo_hidden * counted[..., None]).cumsum(dim=1)
        count = states["emo_count"][:, None] + counted.cumsum(dim=1)
        baseline = model.audio_feature_map_emo(seen / count.clamp(min=1.0)[..., None])
        target = (emotion @ model.emotion_prototypes)[:, None, :]  # a label's prototype, or a blend
        attended = shift_to_prototype(memory, baseline, target, emotion_strength)  # as EmoTalk.override_emotion
        memory = blend_to_prototype(memory, target, emotion_strength)

        batch, slots = frames.shape
        level_emb = model.obj_vector_level(torch.stack([1.0 - level, level], dim=-1))
        person_emb = model.obj_vector_person(person)
        tgt = torch.cat([content, F.relu(model.audio_feature_map_emo2(memory)),
                         level_emb[:, None, :].expand(batch, slots, -1),
                         person_emb[:, None, :].expand(batch, slots, -1)], dim=-1)
        decoded, decoder_state = self.decode(tgt, attended, next_frame, n_frames, states)
        new.update(decoder_state)
        new["next_frame"] = next_frame + n_frames

        weights = model.bs_map_r(decoded).clamp(0.0, 1.0)
        new["emo_sum"], new["emo_count"] = seen[:, -1], count[:, -1]
        pooled = new["emo_sum"] / new["emo_count"].clamp(min=1.0)[:, None]
        logits = model.audio_encoder_emo.classifier(pooled)
        return {"weights": weights, "n_frames": n_frames, "emotion_logits": logits}, new


def step_interface(step: nn.Module) -> StepInterface:
    """The tensors of a built step, `SmallStreamingStep` or `WindowStreamingStep` (an artifact's come
    from its manifest)."""
    return StepInterface(tuple(step.input_specs()), tuple(step.output_specs()), tuple(step.state_specs()))
