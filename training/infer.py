"""`emotalk-infer`: offline, full-context inference of one audio file.

This is the reference the streaming engine is measured against: the whole clip at once, the
model's configured lookahead, no post-processing other than clipping to [0, 1]. The control
parsers (`parse_emotion`, `parse_level`, `parse_person`) are shared with the streamer so that both
accept the same spellings.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .audio import read_audio
from .checkpoint import load_model
from .errors import UserError, add_debug_flag, run_cli
from .livelink_csv import write_csv
from .model import EmoTalk, frame_count

PROG = "emotalk-infer"
OUTPUT_SUFFIXES = (".npy", ".csv")
LEVELS = {"low": 0.0, "high": 1.0}
# RAVDESS (our corpus) and the official classifier spell three emotions differently.
_SAME_EMOTION = {"disgust": "disgusted", "fear": "fearful", "surprise": "surprised"}


def _canonical(label: str) -> str:
    key = label.strip().lower()
    return _SAME_EMOTION.get(key, key)


def emotion_index(name: str, labels: Sequence[str]) -> int | None:
    """Index of emotion `name` among a model's labels, by name (case and RAVDESS/official spelling
    insensitive); None where the model has no such label."""
    wanted = _canonical(name)
    return next((i for i, label in enumerate(labels) if _canonical(label) == wanted), None)


def parse_emotion(text: str, labels: Sequence[str]) -> tuple[int | None, float]:
    """`auto` -> (None, 0.0): the voice decides. `LABEL[:STRENGTH]` -> (label index, strength in [0, 1]),
    strength 1.0 when omitted."""
    if text.strip().lower() == "auto":
        return None, 0.0
    name, _, strength_text = text.partition(":")
    index = emotion_index(name, labels)
    if index is None:
        raise UserError(f"unknown emotion {name!r}: use auto or one of {', '.join(labels)}, "
                        f"optionally with a strength, e.g. {labels[0]}:0.7")
    if not strength_text:
        return index, 1.0
    try:
        strength = float(strength_text)
    except ValueError:
        strength = math.nan
    if not 0.0 <= strength <= 1.0:
        raise UserError(f"emotion strength {strength_text!r} is not a number between 0 and 1, "
                        f"e.g. {labels[index]}:0.7")
    return index, strength


def parse_level(text: str | float) -> float:
    """Emotion level: `low` = 0, `high` = 1, or a number between for a blend of the two."""
    key = str(text).strip().lower()
    if key in LEVELS:
        return LEVELS[key]
    try:
        level = float(key)
    except ValueError:
        level = math.nan
    if not 0.0 <= level <= 1.0:
        raise UserError(f"emotion level {text!r} is not low, high or a number between 0 and 1")
    return level


def parse_person(text: str | int, n_persons: int = 24) -> int:
    """Speaking style: one of the model's `n_persons` training speakers, 0-based."""
    try:
        person = int(str(text).strip())
    except ValueError:
        person = -1
    if not 0 <= person < n_persons:
        raise UserError(f"person {text!r} is not a whole number from 0 to {n_persons - 1}")
    return person


def require_prototype(model: EmoTalk, label: int) -> None:
    """An emotion override blends towards a label's prototype; refuse where the model has none."""
    present = (model.emotion_prototypes.abs().sum(dim=1) > 0).tolist()
    check_prototype(present, model.cfg.emotion_labels, label)


def check_prototype(present: Sequence[bool], labels: Sequence[str], label: int) -> None:
    """`present[i]`: label i has a prototype. Refuse an override towards `label` without one."""
    if not any(present):
        raise UserError("this model has no emotion prototypes (an official import, or trained without "
                        "them): use --emotion auto, or a model trained by emotalk-train")
    if not present[label]:
        raise UserError(f"this model has no emotion prototype for {labels[label]!r}: "
                        "its training data had no such clips; choose another emotion or auto")


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the duration (no dropout), then the caller's mode again (the trainer's)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.inference_mode()
def infer(model: EmoTalk, audio: np.ndarray, level: float = 1.0, person: int = 0,
          emotion: int | None = None, strength: float = 1.0,
          lookahead: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N,) 16 kHz audio -> (T, 52) float32 weights in [0, 1] and the voice's emotion probabilities.

    With `emotion` (a label index) the emotion memory is blended towards that label's prototype by
    `strength`; the probabilities stay the voice's own.
    """
    if emotion is not None:
        require_prototype(model, emotion)
    device = next(model.parameters()).device
    frames = frame_count(len(audio), model.cfg.sample_rate, model.cfg.fps)
    wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None].to(device)
    with eval_mode(model):
        content = model.encode_content(wave, frames, lookahead)
        memory, logits = model.encode_emotion(wave, frames, lookahead)
        if emotion is not None:
            memory = model.override_emotion(memory, emotion, strength)
        weights = model.decode(content, memory, torch.tensor([level], device=device),
                               torch.tensor([person], device=device))
    probabilities = torch.softmax(logits[0].float(), dim=-1).cpu().numpy()
    return weights[0].float().clamp(0.0, 1.0).cpu().numpy(), probabilities


def write_weights(path: Path, weights: np.ndarray, fps: int) -> None:
    """Save (T, 52) weights as .npy (EmoTalk order, float32) or Live Link Face .csv, by suffix."""
    if path.suffix.lower() == ".csv":
        write_csv(path, weights, fps)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, weights.astype(np.float32))
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc}): check the folder exists and is writable") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Offline EmoTalk inference: an audio file -> 52 ARKit blendshape weights at 30 fps.")
    parser.add_argument("audio", type=Path, help="speech file (WAV/FLAC/OGG/MP3, any rate, any channels)")
    parser.add_argument("--model", default="default", help="'default' (bundled) or a checkpoint folder")
    parser.add_argument("--out", type=Path, required=True,
                        help="FILE.npy ((T, 52) float32, EmoTalk order) or FILE.csv (Live Link Face CSV)")
    parser.add_argument("--emotion", default="auto",
                        help="'auto' (from the voice) or LABEL[:STRENGTH], e.g. happy:0.7 (default: auto)")
    parser.add_argument("--level", default="high", help="emotion level: low, high or a number in [0, 1] (default: high)")
    parser.add_argument("--person", default="0", help="speaking style, 0..23 (default: 0)")
    parser.add_argument("--lookahead", type=int, default=None,
                        help="encoder frames (20 ms) of future audio; default: the model's setting")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    add_debug_flag(parser)
    return parser


def _run(args: argparse.Namespace) -> None:
    if args.out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"--out {args.out} must end in .npy or .csv")
    if args.lookahead is not None and args.lookahead < 0:
        raise UserError(f"--lookahead {args.lookahead} must be 0 or more")
    level = parse_level(args.level)
    model = load_model(args.model, args.device)
    audio = read_audio(args.audio, model.cfg.sample_rate)
    labels = model.cfg.emotion_labels
    emotion, strength = parse_emotion(args.emotion, labels)
    person = parse_person(args.person, model.cfg.n_persons)
    weights, probabilities = infer(model, audio, level, person, emotion, strength, args.lookahead)
    write_weights(args.out, weights, model.cfg.fps)
    voice = int(probabilities.argmax())
    summary = (f"{PROG}: {len(weights)} frames ({len(audio) / model.cfg.sample_rate:.2f} s) -> {args.out}; "
               f"voice emotion {labels[voice]} (p={probabilities[voice]:.2f})")
    if emotion is not None:
        summary += f", overridden by {labels[emotion]}:{strength:g}"
    print(summary, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, _run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
