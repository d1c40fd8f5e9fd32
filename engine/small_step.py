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
  `k{i}`/`v{i}`: keys and values of each attention layer over its left context (+ look-ahead), as
  rings: a step writes its new frames over the oldest rows, so row r holds frame j with j = r mod size;
  `tail`: the last encoder frame (output frames interpolate between two encoder frames);
- `dec_k{i}`/`dec_v{i}`: the decoder's self-attention keys and values over its bounded past (rings);
- `emo_sum`/`emo_count`: running mean of the emotion features, the speaker's baseline an override
  shifts and the stream's emotion is read against; `emo_recent`/`emo_recent_weight`: their decayed
  sums (`recent_mean`), the voice's emotion;
- `step`/`next_frame`: counters, so each stream of a batch may be at its own phase.

Frame bookkeeping: step s (hop of h encoder frames, look-ahead L) computes front-end frames
hs-1 .. hs+h-2 (frame j needs samples up to 320j+360) and encoder output frames L earlier. Its
hops are shifted by `PREROLL` = 280 samples (the stream starts with 280 zeros), so step s ends at
sample 320h(s+1)-280, exactly where its last frame's audio ends: no frame waits for a hop it does
not need. Output frame k (at k/fps) interpolates encoder frames floor(k*50/fps) and the next; it is
emitted by the first step that has both. Work per step is constant: nothing grows with the stream.

Rings are most of the state (1.2 MB a stream for the bundled model). With `ring` the step returns
only their new rows and the rows they go to, and the backend writes them in place, so a step reads
each ring once instead of copying it in and out (a 48-stream step on ONNX Runtime here: 41 ms
before, 14 ms with rings, 8 ms once the mel and both front-end convolutions became matrix
products). Without `ring` (TensorRT, whose backend replaces every state) the step writes the rows
into a whole new ring itself.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..training.config import ModelConfig
from ..training.control_values import calm_row
from ..training.errors import UserError
from ..training.framing import ENCODER_HOP, MEL_HOP, N_FFT, POS_CONV_KERNEL
from ..training.model import RECENT_S, EmoTalk, blend_to_prototype, decayed_sums, shift_to_prototype
from ..training.offline import prototypes_present
from ..training.streaming_encoder import EncoderLayer, StreamingEncoder
from .interface import (
    AUDIO_CONTEXT, StepInterface, TensorSpec, check_streamable, encoder_state_specs, frame_ratio, input_specs, output_slots,
    output_specs, small_state_specs,
)

MASK = -3.0e4  # additive attention mask: exp() is 0 in fp32 and it still fits fp16


def _split_heads(x: Tensor, heads: int) -> Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _ring_frames(first_new: Tensor, size: int) -> Tensor:
    """(B, size): the frame each ring row holds before frame `first_new` is written: row r holds the
    latest frame j < first_new with j = r (mod size); negative frames are the zeros before a stream."""
    rows = torch.arange(size, device=first_new.device)
    return first_new[:, None] - 1 - torch.remainder(first_new[:, None] - 1 - rows, size)


def _ring_attention(q: Tensor, k_ring: Tensor, v_ring: Tensor, k_new: Tensor, v_new: Tensor, mask: Tensor) -> Tensor:
    """(B, H, Q, D) attention over a ring's keys followed by the new ones, with an additive mask over
    both, merged back to (B, Q, H*D). Scoring the ring and the new keys apart means the ring, most of
    the step's memory, is only read, never copied."""
    q = q * q.shape[-1] ** -0.5
    scores = torch.cat([q @ k_ring.transpose(-1, -2), q @ k_new.transpose(-1, -2)], dim=-1) + mask
    weights = scores.softmax(dim=-1)
    size = k_ring.shape[2]
    out = weights[..., :size] @ v_ring + weights[..., size:] @ v_new
    batch, heads, length, dim = out.shape
    return out.transpose(1, 2).reshape(batch, length, heads * dim)


def _write_ring(ring: Tensor, new: Tensor, at: Tensor) -> Tensor:
    """The whole ring (B, H, size, D) after writing `new` (B, H, n, D) at rows `at` (B, n; -1: not
    written): the form for backends that replace every state each step (TensorRT)."""
    batch, heads, size, dim = ring.shape
    spill = torch.cat([ring, ring.new_zeros(batch, heads, 1, dim)], dim=2)  # unwritten rows land on row `size`
    index = torch.where(at >= 0, at, size)[:, None, :, None].expand(-1, heads, -1, dim)
    return spill.scatter(2, index, new)[:, :, :size]


def _local_mask(keys: Tensor, query_first: Tensor, n_queries: int, left: int, right: int, end: Tensor) -> Tensor:
    """(B, 1, Q, K) additive mask: query i sees the key frames `keys` (B, K) in [i - left, i + right]
    that exist (0 <= j < end)."""
    queries = query_first[:, None] + torch.arange(n_queries, device=keys.device)
    distance = keys[:, None, :] - queries[:, :, None]
    exists = (keys >= 0) & (keys < end[:, None])
    ok = (distance >= -left) & (distance <= right) & exists[:, None, :]
    return torch.where(ok, 0.0, MASK)[:, None]


class RingStore:
    """Where a step puts its new keys and values: as rows and indices for a backend that writes them
    into its pools in place (`ring`), or as whole new tensors."""

    def __init__(self, ring: bool):
        self.ring = ring
        self.states: dict[str, Tensor] = {}
        self.at: dict[str, Tensor] = {}

    def put(self, name: str, old: Tensor, new: Tensor, at: Tensor) -> None:
        if self.ring:
            self.states[name], self.at[name] = new, at
        else:
            self.states[name] = _write_ring(old, new, at)


class EncoderStep(nn.Module):
    """Streaming view of one `StreamingEncoder`: a hop of audio -> `hop_frames` encoder frames."""

    def __init__(self, encoder: StreamingEncoder, prefix: str, hop_frames: int, lookahead: int, ring: bool):
        super().__init__()
        self.encoder = encoder
        self.ring = ring
        self.prefix = prefix
        self.hop = hop_frames
        self.lookahead = lookahead
        self.left = encoder.cfg.left_context
        conv = encoder.subsample  # (hidden, n_mels, 3) -> (hidden, 3 * n_mels), kernel tap-major
        self.register_buffer("subsample_weight", conv.weight.permute(0, 2, 1).reshape(conv.out_channels, -1),
                             persistent=False)
        self.register_buffer("pos_weight", encoder.pos_conv.weight[:, 0].T.contiguous(), persistent=False)  # (15, hidden)
        frames = torch.arange(hop_frames)[:, None]
        self.register_buffer("mel_windows", 2 * frames + torch.arange(3), persistent=False)
        self.register_buffer("pos_windows", frames + torch.arange(POS_CONV_KERNEL), persistent=False)

    def state_specs(self) -> list[TensorSpec]:
        return encoder_state_specs(self.encoder.cfg, self.prefix, self.lookahead, self.ring)

    def frontend(self, mel: Tensor, first_mel: Tensor, mel_cache: Tensor, pos_cache: Tensor,
                 first_frame: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """New front-end frames (B, h, hidden) from the hop's mel frames (B, 2h, n_mels), as
        `StreamingEncoder.frontend` computes them offline."""
        enc = self.encoder
        mel_index = first_mel[:, None] + torch.arange(mel.shape[1], device=mel.device)
        mel = torch.where((mel_index >= 0)[..., None], mel, 0.0)  # offline pads frame -1 with zeros
        mels = torch.cat([mel_cache, mel], dim=1)  # (B, 2h + 1, n_mels)
        # Both convolutions as products over gathered windows: on a few frames a matrix product is
        # several times cheaper than a convolution kernel in ONNX Runtime.
        batch, h = mels.shape[0], self.hop
        windows = mels[:, self.mel_windows].reshape(batch, h, -1)  # (B, h, 3 * n_mels): mels 2j-1..2j+1
        x = enc.input_norm(F.gelu(F.linear(windows, self.subsample_weight, enc.subsample.bias)))
        frames = first_frame[:, None] + torch.arange(h, device=x.device)
        x = torch.where((frames >= 0)[..., None], x, 0.0)  # the positional conv's zero padding
        positions = torch.cat([pos_cache, x], dim=1)
        pos = (positions[:, self.pos_windows] * self.pos_weight).sum(dim=2) + enc.pos_conv.bias
        return x + F.gelu(pos), mels[:, -1:], positions[:, -(POS_CONV_KERNEL - 1):]

    def attend(self, layer: EncoderLayer, queries: Tensor, keys: Tensor, k_ring: Tensor, v_ring: Tensor,
               key_first: Tensor, query_first: Tensor, right: int, end: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One layer on `queries` (residual stream) with new key frames `keys` (from `key_first` on)
        after the ring's: the layer's output, the new keys and values and their ring rows."""
        hidden, heads = queries.shape[-1], layer.heads
        w, b = layer.qkv.weight, layer.qkv.bias
        q = F.linear(layer.layer_norm(queries), w[:hidden], b[:hidden])
        kv = F.linear(layer.layer_norm(keys), w[hidden:], b[hidden:])
        k_new, v_new = _split_heads(kv[..., :hidden], heads), _split_heads(kv[..., hidden:], heads)
        size = k_ring.shape[2]
        new_frames = key_first[:, None] + torch.arange(keys.shape[1], device=keys.device)
        key_frames = torch.cat([_ring_frames(key_first, size), new_frames], dim=1)
        mask = _local_mask(key_frames, query_first, queries.shape[1], self.left, right, end)
        x = queries + layer.out_proj(_ring_attention(_split_heads(q, heads), k_ring, v_ring, k_new, v_new, mask))
        x = x + layer.output_dense(F.gelu(layer.intermediate_dense(layer.final_layer_norm(x))))
        return x, k_new, v_new, torch.remainder(new_frames, size)

    def forward(self, mel: Tensor, step: Tensor, end: Tensor, states: dict[str, Tensor],
                store: RingStore) -> Tensor:
        """Returns encoder frames (hs-2-L .. hs+h-2-L) = the previous tail + h new; the new state
        goes to `store`."""
        p, h, lookahead = self.prefix, self.hop, self.lookahead
        first = h * step - 1  # first new front-end frame
        new = store.states
        x, new[f"{p}mel"], new[f"{p}pos"] = self.frontend(mel, 2 * first, states[f"{p}mel"], states[f"{p}pos"], first)
        keys = x
        if lookahead:
            delayed = torch.cat([states[f"{p}delay"], x], dim=1)
            x, new[f"{p}delay"] = delayed[:, :h], delayed[:, h:]
        query_first = first - lookahead
        for i, layer in enumerate(self.encoder.layers):
            k, v = f"{p}k{i}", f"{p}v{i}"
            x, k_new, v_new, at = self.attend(layer, x, keys if i == 0 else x, states[k], states[v],
                                              first if i == 0 else query_first, query_first,
                                              lookahead if i == 0 else 0, end)
            store.put(k, states[k], k_new, at)
            store.put(v, states[v], v_new, at)
        x = torch.cat([states[f"{p}tail"], self.encoder.layer_norm(x)], dim=1)
        new[f"{p}tail"] = x[:, -1:]
        return x


class SmallStreamingStep(nn.Module):
    """The whole `small` model as one streaming step over a batch of independent streams."""

    def __init__(self, model: EmoTalk, hop_frames: int, lookahead: int, ring: bool = True):
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
        self.ring = ring
        self.recent_frames = RECENT_S * cfg.fps
        self.ratio = frame_ratio(cfg)
        self.slots = output_slots(hop_frames, self.ratio)
        self.content = EncoderStep(model.audio_encoder_cont, "content_", hop_frames, lookahead, ring)
        self.emotion = EncoderStep(model.audio_encoder_emo.backbone, "emotion_", hop_frames, lookahead, ring)
        self.shared_mel = cfg.content.n_mels == cfg.emotion.n_mels
        mel_starts = torch.arange(2 * hop_frames)[:, None] * MEL_HOP
        self.register_buffer("mel_samples", mel_starts + torch.arange(N_FFT), persistent=False)  # (2h, N_FFT)
        heads = cfg.decoder_heads
        slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / heads) for i in range(heads)])
        self.register_buffer("alibi_slopes", slopes[None, :, None, None], persistent=False)  # (1, H, 1, 1)
        calm = calm_row(cfg.emotion_labels, prototypes_present(model))
        self.register_buffer("calm", torch.tensor(calm), persistent=False)  # the rest of `auto`'s face

    @property
    def hop_samples(self) -> int:
        return self.hop_frames * ENCODER_HOP

    def input_specs(self) -> list[TensorSpec]:
        return input_specs(self.cfg, self.hop_samples)

    def output_specs(self) -> list[TensorSpec]:
        return output_specs(self.cfg, self.slots)

    def state_specs(self) -> list[TensorSpec]:
        return small_state_specs(self.cfg, self.lookahead, self.ring)

    def interpolate(self, frames: Tensor, low: Tensor, frac: Tensor) -> Tensor:
        """Output-frame features from encoder frames (B, h + 1, C) at window positions low + frac."""
        last = frames.shape[1] - 1
        index = low.clamp(0, last)[..., None].expand(-1, -1, frames.shape[-1])
        upper = (low + 1).clamp(0, last)[..., None].expand(-1, -1, frames.shape[-1])
        below, above = frames.gather(1, index), frames.gather(1, upper)
        return below + (above - below) * frac[..., None]

    def decode(self, tgt: Tensor, memory: Tensor, next_frame: Tensor, n_frames: Tensor,
               states: dict[str, Tensor], store: RingStore) -> Tensor:
        """The transformer decoder on this step's slots, attending to its past (a ring of
        `decoder_past` frames) with EmoTalk's periodic ALiBi bias; the first `n_frames` slots' keys
        and values join the ring."""
        past, period = self.cfg.decoder_past, self.cfg.alibi_period
        frames = next_frame[:, None] + torch.arange(self.slots, device=tgt.device)
        key_frames = torch.cat([_ring_frames(next_frame, past), frames], dim=1)
        distance = (frames[:, :, None] - key_frames[:, None, :])[:, None]  # (B, 1, slots, past + slots)
        bias = -self.alibi_slopes * torch.div(distance, period, rounding_mode="floor").clamp(min=0)
        allowed = (distance >= 0) & (distance <= past) & (key_frames >= 0)[:, None, None, :]
        mask = torch.where(allowed, bias, MASK)
        finished = torch.arange(self.slots, device=tgt.device)[None, :] < n_frames[:, None]
        at = torch.where(finished, torch.remainder(frames, past), -1)
        x = tgt
        for i, layer in enumerate(self.model.transformer_decoder.layers):
            attn, d, heads = layer.self_attn, x.shape[-1], layer.self_attn.num_heads
            q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).split(d, dim=-1)
            k_new, v_new = _split_heads(k, heads), _split_heads(v, heads)
            k_ring, v_ring = states[f"dec_k{i}"], states[f"dec_v{i}"]
            x = layer.norm1(x + attn.out_proj(_ring_attention(_split_heads(q, heads), k_ring, v_ring, k_new, v_new, mask)))
            cross = layer.multihead_attn  # each frame attends only its own emotion frame: softmax = 1
            value = F.linear(memory, cross.in_proj_weight[2 * d:], cross.in_proj_bias[2 * d:])
            x = layer.norm2(x + cross.out_proj(value))
            x = layer.norm3(x + layer.linear2(F.relu(layer.linear1(x))))
            store.put(f"dec_k{i}", k_ring, k_new, at)
            store.put(f"dec_v{i}", v_ring, v_new, at)
        return x

    def forward(self, audio: Tensor, level: Tensor, person: Tensor, emotion: Tensor, emotion_strength: Tensor,
                audio_end: Tensor, states: dict[str, Tensor]
                ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """One hop of every stream: its outputs, its next states (of a ring state: the new rows) and
        where each ring state's new rows go (empty unless `ring`)."""
        model = self.model
        step, next_frame = states["step"], states["next_frame"]
        window = torch.cat([states["audio_context"], audio], dim=1)
        store = RingStore(self.ring)
        new = store.states
        new.update({"step": step + 1, "audio_context": window[:, -AUDIO_CONTEXT:]})
        # The hop's mel frames (the window is exactly their samples), once when both encoders agree.
        samples = window[:, self.mel_samples]
        mel = self.content.encoder.mel.windowed(samples)
        emo_mel = mel if self.shared_mel else self.emotion.encoder.mel.windowed(samples)
        content = self.content(mel, step, audio_end, states, store)
        emo = self.emotion(emo_mel, step, audio_end, states, store)

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
        so_far = seen / count.clamp(min=1.0)[..., None]
        baseline = model.audio_feature_map_emo(so_far)
        # Each frame's emotion over the voice's recent frames against the speaker's usual (as
        # EmoTalk.encode_as_streamed); the last slot's is the stream's. A label's prototype, or
        # under auto that emotion in proportion to its confidence, is the target.
        recent, weight = decayed_sums(emo_hidden, counted, states["emo_count"], states["emo_recent"],
                                      states["emo_recent_weight"], self.recent_frames)
        logits = model.stream_emotion(recent / weight.clamp(min=1.0)[..., None], seen, count)
        target = model.emotion_target(emotion, logits, count, self.calm)
        attended = shift_to_prototype(memory, baseline, target, emotion_strength)  # as EmoTalk.override_emotion
        memory = blend_to_prototype(memory, target, emotion_strength)

        batch, slots = frames.shape
        level_emb = model.obj_vector_level(torch.stack([1.0 - level, level], dim=-1))
        person_emb = model.obj_vector_person(person)
        tgt = torch.cat([content, F.relu(model.audio_feature_map_emo2(memory)),
                         level_emb[:, None, :].expand(batch, slots, -1),
                         person_emb[:, None, :].expand(batch, slots, -1)], dim=-1)
        decoded = self.decode(tgt, attended, next_frame, n_frames, states, store)
        new["next_frame"] = next_frame + n_frames

        weights = model.bs_map_r(decoded).clamp(0.0, 1.0)
        new["emo_sum"], new["emo_count"] = seen[:, -1], count[:, -1]
        new["emo_recent"], new["emo_recent_weight"] = recent[:, -1], weight[:, -1]
        return {"weights": weights, "n_frames": n_frames, "emotion_logits": logits[:, -1]}, new, store.at


def step_interface(step: nn.Module) -> StepInterface:
    """The tensors of a built step, `SmallStreamingStep` or `WindowStreamingStep` (an artifact's come
    from its manifest)."""
    return StepInterface(tuple(step.input_specs()), tuple(step.output_specs()), tuple(step.state_specs()))
