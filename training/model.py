"""EmoTalk (arXiv 2303.11089): emotion-disentangling encoders and an emotion-guided decoder.

One implementation for the whole family, sized by `ModelConfig`. Module names follow the official
release (github.com/psyai-net/EmoTalk_release, model.py and wav2vec.py) so that `large` loads
`EmoTalk.pth` key for key:

    audio --> audio_encoder_cont --> audio_feature_map_cont ------------> content  (content_dim)
    audio --> audio_encoder_emo  --> audio_feature_map_emo  --> memory  (d_model)
                                 +-> classifier -> emotion logits      |-> audio_feature_map_emo2 -> emotion (emotion_dim)
    level  (one-hot 2)  --> obj_vector_level  ----------------------------> level (level_dim)
    person (one-hot 24) --> obj_vector_person ----------------------------> person (person_dim)
    tgt = [content, emotion, level, person]  --(causal ALiBi self-attn, cross-attn to memory)--> bs_map_r -> 52
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import EncoderConfig, ModelConfig
from .framing import frame_count
from .input_level import model_input
from .streaming_encoder import StreamingEncoder
from .wav2vec2 import Wav2Vec2Model, linear_interpolation


DECODE_BLOCK = 512  # output frames per decoder call on long clips
SURE = 0.5  # `auto` shows a detected emotion from this calibrated probability up, wholly at 1
EVIDENCE_S = 2.0  # and in full only once this much of the stream is heard: a few frames are no evidence
RECENT_S = 3.0  # the voice's recent emotion (what a stream reports, `auto` shows): a plain mean over
# the stream's first RECENT_S, then its past fades with this time constant (`recent_mean`)
SPEAKER_PRIOR_S = 2.5  # a stream's emotion is read against its speaker's usual features, which start
# as the training voices' mean counted as this much speech (`speaker_baseline`)

# The emotion head's known region (ClassificationHead.familiarity): checkpoints from before it, and
# official ones, lack these buffers and load with the region unset.
FAMILIARITY_KEYS = tuple(f"audio_encoder_emo.classifier.{name}"
                         for name in ("familiar_mean", "familiar_precision", "familiar_range"))


def build_backbone(cfg: EncoderConfig, fps: int) -> nn.Module:
    if cfg.kind == "wav2vec2":
        return Wav2Vec2Model(cfg)
    if cfg.kind == "streaming":
        return StreamingEncoder(cfg, fps)
    raise ValueError(f"unknown encoder kind {cfg.kind!r}")


class ClassificationHead(nn.Module):
    """dropout -> dense -> tanh -> dropout -> out_proj, over time-pooled encoder features.

    At inference the logits shrink towards "unsure" (all equal) as the features leave the region of
    the clips the head was fitted on (`familiarity`): a head is only as sure as its data is near.
    """

    def __init__(self, hidden: int, n_labels: int, dropout: float = 0.1):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, n_labels)
        self.dropout = nn.Dropout(dropout)
        # Where the head's training features lie (`emotion_head.familiar_region`); zeros: not known.
        self.register_buffer("familiar_mean", torch.zeros(hidden))
        self.register_buffer("familiar_precision", torch.zeros(hidden, hidden))
        self.register_buffer("familiar_range", torch.zeros(2))  # full trust up to this distance, none from that

    def forward(self, pooled: Tensor) -> Tensor:
        logits = self._logits(pooled)
        return logits if self.training else logits * self.familiarity(pooled)[..., None]

    def _logits(self, pooled: Tensor) -> Tensor:
        return self.out_proj(self.dropout(torch.tanh(self.dense(self.dropout(pooled)))))

    def relative_to_speaker(self, pooled: Tensor, baseline: Tensor) -> Tensor:
        """Logits of `pooled` read against the speaker's usual features (`baseline`, same shape): moved by
        how far the baseline lies from the training voices' mean, so that a naturally low or tense
        voice is not read as sad or angry. The trust (`familiarity`) stays that of `pooled` itself:
        a voice unlike any the head was fitted on is still unsure. A head without a known region has
        no training mean to move to and reads `pooled` as it is."""
        moved = torch.where(self.familiar_range[1] > 0, pooled - baseline + self.familiar_mean, pooled)
        return self._logits(moved) * self.familiarity(pooled)[..., None]

    def familiarity(self, pooled: Tensor) -> Tensor:
        """(...,) 1 within `familiar_range[0]` of the training features (Mahalanobis distance), falling
        linearly to 0 at `familiar_range[1]`; 1 everywhere for a head without a known region."""
        trusted, untrusted = self.familiar_range[0], self.familiar_range[1]
        centred = pooled - self.familiar_mean
        distance = ((centred @ self.familiar_precision) * centred).sum(dim=-1).clamp(min=0.0).sqrt()
        falling = ((untrusted - distance) / (untrusted - trusted).clamp(min=1e-6)).clamp(0.0, 1.0)
        return torch.where(untrusted > 0, falling, torch.ones_like(falling))


class EmotionEncoder(nn.Module):
    """An audio encoder plus an emotion classifier; its per-frame features guide the decoder."""

    def __init__(self, cfg: EncoderConfig, n_labels: int, fps: int):
        super().__init__()
        # The official checkpoint names the backbone `wav2vec2`; ours is a streaming encoder.
        self.backbone_name = "wav2vec2" if cfg.kind == "wav2vec2" else "encoder"
        self.add_module(self.backbone_name, build_backbone(cfg, fps))
        self.classifier = ClassificationHead(cfg.hidden, n_labels)

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.backbone_name)

    def forward(self, audio: Tensor, frame_num: int, lookahead: int | None = None,
                valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return per-frame features (B, T, hidden) and clip emotion logits (B, n_labels).

        `valid` (B, T) marks real frames of zero-padded clips in a batch, so padding does not
        dilute the pooled emotion (streaming encoders only).
        """
        if isinstance(self.backbone, Wav2Vec2Model):
            # Official path: encode at 30/50 of the CNN rate, pool, then resample to the frames.
            hidden = self.backbone(audio)
            logits = self.classifier(hidden.mean(dim=1))
            return linear_interpolation(hidden, frame_num), logits
        hidden = self.backbone(audio, frame_num, lookahead)
        if valid is None:
            pooled = hidden.mean(dim=1)
        else:
            weights = valid.to(hidden.dtype)[..., None]
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return hidden, self.classifier(pooled)


def alibi_causal_bias(n_heads: int, length: int, period: int, past: int = 0,
                      device: torch.device | None = None) -> Tensor:
    """FaceFormer/EmoTalk self-attention bias, (heads, T, T): -slope*floor((i-j)/period), causal.

    `past` > 0 also hides frames more than `past` steps back, so streaming needs a bounded cache.
    """
    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)], device=device)
    i = torch.arange(length, device=device)
    distance = i[:, None] - i[None, :]
    bias = -slopes[:, None, None] * torch.div(distance, period, rounding_mode="floor").clamp(min=0)
    hidden = distance < 0
    if past > 0:
        hidden = hidden | (distance > past)
    return bias.masked_fill(hidden, float("-inf"))


def aligned_memory_mask(length: int, device: torch.device | None = None) -> Tensor:
    """Frame i of the decoder cross-attends only to emotion frame i (True = masked)."""
    return ~torch.eye(length, dtype=torch.bool, device=device)


def one_hot_blend(value: Tensor, size: int) -> Tensor:
    """Indices (B,) -> one-hot; a float level in [0, 1] -> [1 - l, l]; (B, size) weights, or
    (B, T, size) for each frame, pass through."""
    if value.dim() >= 2:
        return value.float()
    if value.is_floating_point() and size == 2:
        return torch.stack([1.0 - value, value], dim=-1)
    return F.one_hot(value.long(), size).float()


def running_mean(memory: Tensor) -> Tensor:
    """(B, T, D) -> the mean of frames 0..t at each t: the speaker's baseline as heard so far."""
    count = torch.arange(1, memory.shape[1] + 1, device=memory.device, dtype=memory.dtype)
    return memory.cumsum(dim=1) / count[None, :, None]


def speaker_baseline(total: Tensor, count: Tensor, prior: Tensor, prior_frames: float) -> Tensor:
    """The speaker's usual emotion features after `count` (...,) frames summing to `total` (..., D):
    their mean, with `prior` (D,), the training voices' mean, counted as `prior_frames` more frames.
    A new stream starts at the prior and becomes its own speaker's within a few `prior_frames`."""
    return (total + prior_frames * prior) / (count[..., None] + prior_frames)


def decayed_sums(x: Tensor, counted: Tensor, before: Tensor, total: Tensor, weight: Tensor, frames: float
                 ) -> tuple[Tensor, Tensor]:
    """Sums of `x` (B, S, D) over its counted frames (`counted` (B, S), 1 or 0) on top of `total`
    (B, D) and `weight` (B,) carried over `before` (B,) counted frames: each frame's (B, S, D) sum
    and (B, S) total weight. Every frame counts fully until the stream has `frames` of them; from
    then on each new frame fades everything before it by exp(-1 / `frames`). One matrix product for
    the S frames, with no growing powers, so it is exact in float32 however long the stream."""
    upto = before[:, None] + counted.cumsum(dim=1)  # counted frames up to and including each frame
    faded = (upto[:, :, None] - upto[:, None, :].clamp(min=frames)).clamp(min=0.0)  # fading frames from j to i
    causal = torch.ones(x.shape[1], x.shape[1], device=x.device, dtype=x.dtype).tril()
    kernel = torch.exp(-faded / frames) * causal * counted[:, None, :]
    carried = torch.exp(-(upto - before[:, None].clamp(min=frames)).clamp(min=0.0) / frames)
    return kernel @ x + carried[..., None] * total[:, None, :], kernel.sum(dim=-1) + carried * weight[:, None]


def recent_mean(hidden: Tensor, frames: float, block: int = DECODE_BLOCK) -> Tensor:
    """(B, T, D) -> at each t the voice's recent emotion features: the mean over the first `frames`
    frames, then a mean whose past fades with time constant `frames` (`decayed_sums`). A mean since
    the stream began stops moving on a long stream whose emotion changes; this follows it within a
    few time constants, and reads a short utterance as its plain mean. Block by block, as a
    stream's steps compute it."""
    batch, length, width = hidden.shape
    total, weight = hidden.new_zeros(batch, width), hidden.new_zeros(batch)
    means = []
    for start in range(0, length, block):
        chunk = hidden[:, start:start + block]
        before = hidden.new_full((batch,), float(start))
        sums, weights = decayed_sums(chunk, torch.ones_like(chunk[..., 0]), before, total, weight, frames)
        total, weight = sums[:, -1], weights[:, -1]
        means.append(sums / weights[..., None])
    return torch.cat(means, dim=1)


def confident_weights(probabilities: Tensor, calm: Tensor, present: Tensor, evidence: Tensor) -> Tensor:
    """(..., labels) calibrated probabilities -> the labels' weights in the face `auto` shows: each
    label (with a prototype, `present`) by how far its probability is above `SURE` (only one can be),
    times `evidence` (...,) (0 to 1: how much of the stream the probabilities rest on), the rest on
    the calm face (`calm`, a one-hot row). An unsure voice gets the calm face, never a confident
    wrong one; the weights move continuously as the probabilities do."""
    shown = ((probabilities - SURE) / (1.0 - SURE)).clamp(min=0.0) * present * evidence[..., None]
    return shown + (1.0 - shown.sum(dim=-1, keepdim=True)) * calm


def blend_to_prototype(memory: Tensor, target: Tensor, strength: Tensor | float) -> Tensor:
    """`memory` blended towards `target` by `strength` ((B,) or a number): the override's expression."""
    if isinstance(strength, Tensor):
        strength = strength[:, None, None]
    return torch.lerp(memory, target.expand_as(memory), strength)


def shift_to_prototype(memory: Tensor, baseline: Tensor, target: Tensor, strength: Tensor | float) -> Tensor:
    """`memory` moved by `strength` x (`target` - `baseline`): the voice's own changes from frame to
    frame stay, its baseline becomes the target's. What the decoder attends to under an override."""
    if isinstance(strength, Tensor):
        strength = strength[:, None, None]
    return memory + strength * (target - baseline)


class EmoTalk(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d_model = cfg.d_model
        self.audio_encoder_cont = build_backbone(cfg.content, cfg.fps)
        self.audio_encoder_emo = EmotionEncoder(cfg.emotion, len(cfg.emotion_labels), cfg.fps)
        self.audio_feature_map_cont = nn.Linear(cfg.content.hidden, cfg.content_dim)
        self.audio_feature_map_emo = nn.Linear(cfg.emotion.hidden, d_model)
        self.audio_feature_map_emo2 = nn.Linear(d_model, cfg.emotion_dim)
        self.obj_vector_level = nn.Linear(cfg.n_levels, cfg.level_dim)
        self.obj_vector_person = nn.Linear(cfg.n_persons, cfg.person_dim)
        layer = nn.TransformerDecoderLayer(d_model, cfg.decoder_heads, cfg.decoder_ffn, batch_first=True)
        self.transformer_decoder = nn.TransformerDecoder(layer, num_layers=cfg.decoder_layers)
        self.bs_map_r = nn.Linear(d_model, len(cfg.blendshapes))
        nn.init.zeros_(self.bs_map_r.weight)
        nn.init.zeros_(self.bs_map_r.bias)
        # Mean emotion memory per label (filled after training): lets a user override the voice's
        # emotion with a label and strength. Not in official checkpoints; zeros there.
        self.register_buffer("emotion_prototypes", torch.zeros(len(cfg.emotion_labels), d_model))

    def _lookahead(self, lookahead: int | None) -> int:
        """Encoder frames of future audio: the config's inference setting unless one is given."""
        return self.cfg.lookahead if lookahead is None else lookahead

    def hear(self, audio: Tensor) -> Tensor:
        """Whole clips (B, N) as the encoders take them: level-normalised where the config says so
        (the streaming engine normalises as the audio arrives, the same way)."""
        if self.cfg.input_level == "raw":
            return audio
        return torch.from_numpy(model_input(audio.detach().cpu().numpy(), self.cfg.input_level)).to(audio)

    # -- the three stages, separate so that training can cross the emotion between clips --

    def encode_content(self, audio: Tensor, frame_num: int, lookahead: int | None = None) -> Tensor:
        """(B, N) audio -> (B, T, content_dim) content features at the output frame rate."""
        return self._content(self.hear(audio), frame_num, lookahead)

    def encode_emotion(self, audio: Tensor, frame_num: int, lookahead: int | None = None,
                       valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, N) audio -> emotion memory (B, T, d_model) and emotion logits (B, n_labels)."""
        return self._emotion(self.hear(audio), frame_num, lookahead, valid)

    def encode(self, audio: Tensor, frame_num: int, lookahead: int | None = None,
               valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Both encoders on the same audio, heard once: content, emotion memory and logits."""
        heard = self.hear(audio)
        return (self._content(heard, frame_num, lookahead), *self._emotion(heard, frame_num, lookahead, valid))

    def _content(self, heard: Tensor, frame_num: int, lookahead: int | None) -> Tensor:
        if isinstance(self.audio_encoder_cont, Wav2Vec2Model):
            hidden = self.audio_encoder_cont(heard, frame_num)
        else:
            hidden = self.audio_encoder_cont(heard, frame_num, self._lookahead(lookahead))
        return self.audio_feature_map_cont(hidden)

    def _emotion(self, heard: Tensor, frame_num: int, lookahead: int | None,
                 valid: Tensor | None) -> tuple[Tensor, Tensor]:
        hidden, logits = self.audio_encoder_emo(heard, frame_num, self._lookahead(lookahead), valid)
        return self.audio_feature_map_emo(hidden), logits

    def encode_as_streamed(self, audio: Tensor, frame_num: int, lookahead: int | None = None
                           ) -> tuple[Tensor, Tensor, Tensor]:
        """Content, emotion memory, and each frame's emotion logits over the voice's recent frames
        (B, T, labels; `recent_mean`) against the speaker's usual (`stream_emotion`), as a stream's
        step finds them: what a stream reports and `auto` shows at that frame (`auto_target`)."""
        heard = self.hear(audio)
        hidden, _ = self.audio_encoder_emo(heard, frame_num, self._lookahead(lookahead))
        count = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype)
        recent = self.stream_emotion(recent_mean(hidden, RECENT_S * self.cfg.fps), hidden.cumsum(dim=1),
                                     count.expand(hidden.shape[:2]))
        return self._content(heard, frame_num, lookahead), self.audio_feature_map_emo(hidden), recent

    def stream_emotion(self, recent: Tensor, total: Tensor, count: Tensor) -> Tensor:
        """A stream's emotion logits (..., labels): the voice's recent features (..., D) read against
        its speaker's usual (`speaker_baseline` of the `total` (..., D) of its `count` (...,) frames
        so far). On each held-out voice's clips back to back as one stream this reads 0.520 right
        where the recent features alone read 0.442 (docs/model.md#relative-to-the-speaker)."""
        classifier = self.audio_encoder_emo.classifier
        baseline = speaker_baseline(total, count, classifier.familiar_mean, SPEAKER_PRIOR_S * self.cfg.fps)
        return classifier.relative_to_speaker(recent, baseline)

    def auto_target(self, logits: Tensor, heard: Tensor, calm: Tensor) -> Tensor:
        """(..., labels) emotion logits over `heard` (...,) frames of the stream -> (..., d_model) the
        emotion memory `auto` moves the face to: the detected emotion's prototype in proportion to
        its confidence (`confident_weights`, with the model's calibration, in full after
        `EVIDENCE_S`), the rest the calm face's (`calm`: its one-hot row)."""
        probabilities = torch.softmax(logits / self.cfg.emotion_temperature, dim=-1)
        present = (self.emotion_prototypes.abs().sum(dim=-1) > 0).to(logits.dtype)
        evidence = (heard.to(logits.dtype) / (EVIDENCE_S * self.cfg.fps)).clamp(max=1.0)
        return confident_weights(probabilities, calm, present, evidence) @ self.emotion_prototypes

    def emotion_target(self, emotion: Tensor, logits: Tensor, heard: Tensor, calm: Tensor) -> Tensor:
        """A streaming step's override target per frame, (B, T, d_model): the chosen label's
        prototype (`emotion`: (B, labels) one-hot rows), or where the row is all zeros (`auto`)
        `auto_target` of the frame's emotion logits (B, T, labels) over `heard` (B, T) frames."""
        chosen = (emotion @ self.emotion_prototypes)[:, None, :]
        return chosen + (1.0 - emotion.sum(dim=-1))[:, None, None] * self.auto_target(logits, heard, calm)

    def override_emotion(self, memory: Tensor, target: Tensor, strength: float) -> tuple[Tensor, Tensor]:
        """The voice's emotion memory under an emotion override (strength 0..1) towards `target` (a
        label's prototype, (d_model,), or `auto_target`'s (B, T, d_model)), as (expression,
        attended). The expression, the decoder's input row that sets the face, is blended towards
        the target. The attended memory keeps the voice's moment-to-moment changes (stress,
        effort, which the mouth follows) and moves its running mean, the speaker's baseline, to the
        target; causal, as streaming is. On real voices this keeps the face calm without flattening
        the mouth (docs/model.md, emotion override)."""
        return (blend_to_prototype(memory, target, strength),
                shift_to_prototype(memory, running_mean(memory), target, strength))

    def decode(self, content: Tensor, memory: Tensor, level: Tensor, person: Tensor,
               attended: Tensor | None = None) -> Tensor:
        """Fuse content, emotion, level and person and decode (B, T, 52) blendshape weights; the
        decoder attends to `attended` (default: `memory`; `override_emotion` gives both).

        `level` is (B,) indices or floats in [0, 1], (B, 2) weights, or (B, T, 2) for each frame;
        `person` is (B,) indices or (B, 24) weights for a blend of styles.
        """
        batch, length, _ = content.shape
        emotion = F.relu(self.audio_feature_map_emo2(memory))
        level_emb = self.obj_vector_level(one_hot_blend(level, self.cfg.n_levels).to(content))
        level_emb = level_emb if level_emb.dim() == 3 else level_emb[:, None, :].expand(batch, length, -1)
        person_emb = self.obj_vector_person(one_hot_blend(person, self.cfg.n_persons).to(content))
        tgt = torch.cat([
            content, emotion,
            level_emb,
            person_emb[:, None, :].expand(batch, length, -1),
        ], dim=-1)
        attended = memory if attended is None else attended
        past = self.cfg.decoder_past
        if past == 0 or length <= DECODE_BLOCK:
            return self.bs_map_r(self._decode_window(tgt, attended))
        # A bounded past makes long clips decodable block by block, exactly, in linear memory.
        blocks = []
        for start in range(0, length, DECODE_BLOCK):
            first, stop = max(0, start - past), min(length, start + DECODE_BLOCK)
            blocks.append(self._decode_window(tgt[:, first:stop], attended[:, first:stop])[:, start - first:])
        return self.bs_map_r(torch.cat(blocks, dim=1))

    def _decode_window(self, tgt: Tensor, memory: Tensor) -> Tensor:
        batch, length, _ = tgt.shape
        bias = alibi_causal_bias(self.cfg.decoder_heads, length, self.cfg.alibi_period,
                                 self.cfg.decoder_past, device=tgt.device).to(tgt.dtype)
        tgt_mask = bias.repeat(batch, 1, 1)  # (B * heads, T, T), batch-major as MultiheadAttention wants
        return self.transformer_decoder(tgt, memory, tgt_mask=tgt_mask,
                                        memory_mask=aligned_memory_mask(length, tgt.device))

    def forward(self, audio: Tensor, level: Tensor, person: Tensor, frame_num: int | None = None,
                lookahead: int | None = None) -> tuple[Tensor, Tensor]:
        """Offline full-context inference: (B, N) 16 kHz audio -> (B, T, 52) weights, emotion logits."""
        if frame_num is None:
            frame_num = frame_count(audio.shape[-1], self.cfg.sample_rate, self.cfg.fps)
        content, memory, logits = self.encode(audio, frame_num, lookahead)
        return self.decode(content, memory, level, person), logits
