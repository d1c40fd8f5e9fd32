"""The paper's objective, L = 1.0 L_cross + 1.0 L_self + 0.5 L_vel + 0.1 L_cls, plus 0.5 L_lips.

A batch holds pairs (A, B): the same sentence by the same person with different emotions. Self
reconstruction decodes each clip from its own content and emotion. Cross reconstruction decodes
A's content with B's emotion (and the reverse): since the two clips differ in timing, B's emotion
features and B's labels are first warped onto A's timeline with the phoneme alignment, so the target
is "what A's words look like with B's emotion". This is what disentangles content from emotion.

L_lips is ours: the squared error of the lip aperture, jawOpen - mouthClose, on every decoded
sequence. The mean over 52 channels gives the one distance a viewer judges lip sync by (are the lips
shut on /p b m/?) a 52nd of the weight, and a model unsure of a real voice settles on a half-open
mouth that never closes; weighting the aperture on its own keeps the closures.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blendshapes import INDEX
from .model import EmoTalk

WEIGHTS = {"cross": 1.0, "self": 1.0, "velocity": 0.5, "classification": 0.1, "lips": 0.5}
JAW_OPEN, MOUTH_CLOSE = INDEX["jawOpen"], INDEX["mouthClose"]


@dataclass
class PairBatch:
    """Zero-padded tensors for B pairs; `warp_ab[i, k]` is the (fractional) frame of clip B_i
    spoken at A_i's frame k."""

    audio_a: Tensor  # (B, Na)
    audio_b: Tensor  # (B, Nb)
    labels_a: Tensor  # (B, Ta, 52)
    labels_b: Tensor  # (B, Tb, 52)
    valid_a: Tensor  # (B, Ta) bool
    valid_b: Tensor  # (B, Tb) bool
    warp_ab: Tensor  # (B, Ta) float
    warp_ba: Tensor  # (B, Tb) float
    emotion_a: Tensor  # (B,) long
    emotion_b: Tensor  # (B,) long
    level_a: Tensor  # (B,) long
    level_b: Tensor  # (B,) long
    person: Tensor  # (B,) long

    def to(self, device: torch.device) -> "PairBatch":
        return PairBatch(**{k: v.to(device) for k, v in vars(self).items()})


def gather_frames(x: Tensor, position: Tensor) -> Tensor:
    """Linear interpolation of (B, T, C) at fractional frame positions (B, T')."""
    last = x.shape[1] - 1
    position = position.clamp(0, last)
    low = position.floor().long()
    high = (low + 1).clamp(max=last)
    frac = (position - low)[..., None].to(x.dtype)
    take = lambda idx: torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[2]))  # noqa: E731
    return take(low) * (1 - frac) + take(high) * frac


def masked_mse(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    weights = valid.to(pred.dtype)[..., None]
    return ((pred - target).square() * weights).sum() / (weights.sum() * pred.shape[-1]).clamp(min=1.0)


def velocity_mse(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """MSE of frame-to-frame motion: keeps the mouth from lagging or jittering."""
    both = valid[:, 1:] & valid[:, :-1]
    return masked_mse(pred[:, 1:] - pred[:, :-1], target[:, 1:] - target[:, :-1], both)


def aperture_mse(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """MSE of the lip aperture jawOpen - mouthClose (what `emotalk-eval --voices` calls closed lips)."""
    aperture = lambda x: (x[..., JAW_OPEN] - x[..., MOUTH_CLOSE])[..., None]  # noqa: E731
    return masked_mse(aperture(pred), aperture(target), valid)


class EmoTalkLoss(nn.Module):
    """Wraps the model so one forward computes the whole objective (what DDP needs to sync)."""

    def __init__(self, model: EmoTalk, cross: bool = True):
        super().__init__()
        self.model = model
        self.cross = cross

    def forward(self, batch: PairBatch, lookahead: int) -> tuple[Tensor, dict[str, float]]:
        m = self.model
        ta, tb = batch.labels_a.shape[1], batch.labels_b.shape[1]
        content_a, memory_a, logits_a = m.encode(batch.audio_a, ta, lookahead, batch.valid_a)
        content_b, memory_b, logits_b = m.encode(batch.audio_b, tb, lookahead, batch.valid_b)

        self_a = m.decode(content_a, memory_a, batch.level_a, batch.person)
        self_b = m.decode(content_b, memory_b, batch.level_b, batch.person)
        parts = {
            "self": masked_mse(self_a, batch.labels_a, batch.valid_a) + masked_mse(self_b, batch.labels_b, batch.valid_b),
            "velocity": velocity_mse(self_a, batch.labels_a, batch.valid_a) + velocity_mse(self_b, batch.labels_b, batch.valid_b),
            "classification": F.cross_entropy(logits_a, batch.emotion_a) + F.cross_entropy(logits_b, batch.emotion_b),
            "lips": aperture_mse(self_a, batch.labels_a, batch.valid_a) + aperture_mse(self_b, batch.labels_b, batch.valid_b),
        }
        if self.cross:
            cross_a = m.decode(content_a, gather_frames(memory_b, batch.warp_ab), batch.level_b, batch.person)
            cross_b = m.decode(content_b, gather_frames(memory_a, batch.warp_ba), batch.level_a, batch.person)
            target_a = gather_frames(batch.labels_b, batch.warp_ab)  # A's words with B's emotion
            target_b = gather_frames(batch.labels_a, batch.warp_ba)
            parts["cross"] = masked_mse(cross_a, target_a, batch.valid_a) + masked_mse(cross_b, target_b, batch.valid_b)
            parts["velocity"] = parts["velocity"] + velocity_mse(cross_a, target_a, batch.valid_a) \
                + velocity_mse(cross_b, target_b, batch.valid_b)
            parts["lips"] = parts["lips"] + aperture_mse(cross_a, target_a, batch.valid_a) \
                + aperture_mse(cross_b, target_b, batch.valid_b)
        loss = sum(WEIGHTS[name] * value for name, value in parts.items())
        return loss, {name: float(value.detach()) for name, value in parts.items()}
