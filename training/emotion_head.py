"""Refit the emotion classifier on the trained encoder's frozen features.

Training fits the classification head jointly with the emotion encoder: on augmented batches, for a
few epochs, while the features under it keep moving. Once the encoder is fixed, a head fitted to
convergence on its clean, clip-pooled features (the input it has at inference: over an
utterance, the stream's recent mean is its mean) and picked by the validation split generalises
further to voices it has never heard. On the bundled model it raised the cross-voice emotion
accuracy from 0.553 to 0.600 (awb) and 0.585 to 0.754 (Festival)
(docs/results.md#the-emotion-head-refitted-on-frozen-features). Neither the emotion memory nor
the prototypes depend on the head, so the face under a named emotion or the default is unchanged.

The refit also records where those features lie (`familiar_region`), so that at inference the head
is unsure of voices far from every clip it was fitted on (`ClassificationHead.familiarity`). The
region's edges come from the training clips alone: full trust up to the distance 99% of them are
within, none from twice their median distance. With it, the real calm recordings read confidently
as another emotion fell from 9 (the refit alone; 14 before) to 3.
"""
from __future__ import annotations

import copy
import sys
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from tqdm import tqdm

from .model import EmoTalk

if TYPE_CHECKING:
    from .trainer import LoadedClip

STEPS = 400  # full-batch AdamW steps: the validation accuracy has peaked well before
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-2
SEED = 0  # the head's dropout draws: the refit is the same on every run
SHRINKAGE = 0.1  # x the mean variance, added to the covariance's diagonal: few clips for its many dimensions
TRUSTED_PERCENTILE = 99.0  # of the training clips' distances: full trust up to it
UNTRUSTED_X_MEDIAN = 2.0  # none from this many times their median distance


@torch.no_grad()
def pooled_features(model: EmoTalk, clips: list[LoadedClip], device: torch.device, quiet: bool = True) -> Tensor:
    """(clips, hidden): each clip's emotion-encoder features averaged over its frames, as the
    classifier takes them (the model's own input level and look-ahead)."""
    model.eval()
    rows = []
    for clip in tqdm(clips, desc="emotion features", unit="clip", disable=quiet, file=sys.stderr):
        audio = model.hear(torch.from_numpy(clip.audio)[None].to(device))
        hidden, _ = model.audio_encoder_emo(audio, len(clip.labels), model.cfg.lookahead)
        rows.append(hidden[0].mean(dim=0))
    return torch.stack(rows)


def emotion_labels(clips: list[LoadedClip], device: torch.device) -> Tensor:
    """(clips,) each clip's emotion index, beside its `pooled_features` row."""
    return torch.tensor([c.emotion for c in clips], device=device)


def refit_emotion_head(model: EmoTalk, x: Tensor, y: Tensor, vx: Tensor, vy: Tensor) -> float:
    """Refit `model`'s emotion head in place on the train clips' pooled features `x` and labels `y`,
    keeping the step with the best accuracy on the val clips' `vx`, `vy` (the current head competes as
    step 0), and record the region of `x`; returns that accuracy."""
    head = model.audio_encoder_emo.classifier
    head.familiar_range.zero_()  # the fit and its choice see the plain logits
    best_accuracy, best_state = _accuracy(head, vx, vy), copy.deepcopy(head.state_dict())
    optimizer = torch.optim.AdamW(head.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(SEED)
        for _ in range(STEPS):
            head.train()
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(head(x), y).backward()
            optimizer.step()
            accuracy = _accuracy(head, vx, vy)
            if accuracy > best_accuracy:
                best_accuracy, best_state = accuracy, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    mean, precision, edges = familiar_region(x)
    head.familiar_mean.copy_(mean)
    head.familiar_precision.copy_(precision)
    head.familiar_range.copy_(edges)
    model.eval()
    return best_accuracy


def familiar_region(features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The mean, the (shrunk) inverse covariance and the trust edges (distances) of `features` (clips, hidden)."""
    features = features.double()
    mean = features.mean(dim=0)
    covariance = torch.cov(features.T)
    ridge = SHRINKAGE * covariance.diagonal().mean()
    precision = torch.linalg.inv(covariance + ridge * torch.eye(len(mean), dtype=features.dtype, device=features.device))
    centred = features - mean
    distance = ((centred @ precision) * centred).sum(dim=1).sqrt()
    trusted = torch.quantile(distance, TRUSTED_PERCENTILE / 100)
    edges = torch.stack([trusted, torch.maximum(UNTRUSTED_X_MEDIAN * distance.median(), trusted)])
    return mean.float(), precision.float(), edges.float()


@torch.no_grad()
def _accuracy(head: torch.nn.Module, features: Tensor, labels: Tensor) -> float:
    head.eval()
    return (head(features).argmax(dim=1) == labels).float().mean().item()
