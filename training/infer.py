"""`emotalk-infer`: one audio file -> 52 ARKit blendshape weights at 30 fps, offline.

The bundled model (or an exported engine) runs on ONNX Runtime through the streaming engine, whose
frames equal offline full-context inference at the same look-ahead (tests/test_engine.py); this
needs no PyTorch. A checkpoint folder, or `--backend torch`, runs the checkpoint's full-context
forward pass in PyTorch instead (`offline.py`, the reference; the `train` extra).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.interface import frames_from_ms
from .audio import SAMPLE_RATE, read_audio
from .blinks import with_blinks
from .control_values import (
    DEFAULT_EMOTION_HELP, default_emotion, default_level, parse_emotion, parse_level, parse_person,
)
from .errors import UserError, add_debug_flag, require_training, run_cli
from .livelink_csv import write_csv

PROG = "emotalk-infer"
OUTPUT_SUFFIXES = (".npy", ".csv")


@dataclass
class Take:
    """One file's result, whichever backend made it."""

    weights: np.ndarray  # (T, 52)
    probabilities: np.ndarray | None  # the voice's emotion over its last seconds (`RECENT_S`), over `labels`
    labels: Sequence[str]
    fps: int
    emotion: tuple[int | None, float]  # the override: label index (None: auto) and strength


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
    parser.add_argument("--model", default="default",
                        help="'default' (the bundled model), an engine folder from emotalk-export, or a checkpoint folder")
    parser.add_argument("--out", type=Path, required=True,
                        help="FILE.npy ((T, 52) float32, EmoTalk order) or FILE.csv (Live Link Face CSV)")
    parser.add_argument("--emotion", default=None,
                        help=f"'auto' (from the voice) or LABEL[:STRENGTH], e.g. happy:0.7 "
                             f"(default: {DEFAULT_EMOTION_HELP})")
    parser.add_argument("--level", default=None, help="emotion level: low, high, a number in [0, 1], or voice: "
                        "following the voice's arousal (default: voice for a calm or neutral face, high for another "
                        "emotion or auto)")
    parser.add_argument("--person", default="0", help="speaking style, 0..23 (default: 0)")
    parser.add_argument("--lookahead-ms", type=int, default=None, metavar="MS",
                        help="future audio the model waits for, a multiple of 20 ms (default: the model's own, 0 for "
                             "the bundled model; another value needs the train extra)")
    parser.add_argument("--backend", choices=("onnxruntime", "torch"), default=None,
                        help="onnxruntime: the streaming engine (the default for 'default' and engine folders; a "
                             "checkpoint is exported first); torch: the checkpoint's full-context PyTorch pass, the "
                             "reference (the default for a checkpoint folder; needs the train extra)")
    parser.add_argument("--device", default="cpu", help="torch device for --backend torch, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--no-blink", action="store_true",
                        help="no procedural blinks (by default the eyes blink as emotalk-stream's do: the same seed "
                             "gives the same blinks, so a streamed and an offline take of one file match)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the blinks (default: 0)")
    add_debug_flag(parser)
    return parser


def _run(args: argparse.Namespace) -> None:
    if args.out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"--out {args.out} must end in .npy or .csv")
    lookahead = None if args.lookahead_ms is None else frames_from_ms(args.lookahead_ms, "--lookahead-ms", 0)
    on_engine = _runs_on_engine(args)
    if args.device != "cpu" and on_engine:
        raise UserError(f"--device {args.device} is for --backend torch; ONNX Runtime runs on the CPU here")
    level = None if args.level is None else parse_level(args.level)  # None: the face's own (default_level)
    audio = read_audio(args.audio, SAMPLE_RATE)
    take = _run_engine(args, audio, level) if on_engine else _run_torch(args, audio, level, lookahead)
    weights = take.weights if args.no_blink else with_blinks(take.weights, take.fps, args.seed)
    write_weights(args.out, weights, take.fps)
    summary = f"{PROG}: {len(take.weights)} frames ({len(audio) / SAMPLE_RATE:.2f} s) -> {args.out}"
    if take.probabilities is not None:
        voice = int(take.probabilities.argmax())
        summary += f"; voice emotion at the end {take.labels[voice]} (p={take.probabilities[voice]:.2f})"
    label, strength = take.emotion
    if label is not None:
        summary += f", overridden by {take.labels[label]}:{strength:g}"
    print(summary, file=sys.stderr)


def _runs_on_engine(args: argparse.Namespace) -> bool:
    """The backend's default: the engine where no PyTorch is needed (the bundled model at its own
    look-ahead, an engine folder), the full-context reference for a checkpoint."""
    from ..engine.artifact import is_artifact
    from ..engine.engine import bundled_engine_has
    if args.backend is not None:
        return args.backend == "onnxruntime"
    return is_artifact(args.model) or (args.model == "default" and bundled_engine_has(None, args.lookahead_ms))


def _run_engine(args: argparse.Namespace, audio: np.ndarray, level: float | str | None) -> Take:
    """The streaming engine on the whole file: the same frames as offline inference, no PyTorch."""
    from ..engine import Controls, Engine
    engine = Engine.load(args.model, "onnxruntime", lookahead_ms=args.lookahead_ms)
    controls = Controls(level=level, person=args.person, emotion=args.emotion)
    engine.resolve_controls(controls)  # a bad emotion or person is refused before any work
    [(weights, probabilities)] = engine.process_with_emotion([audio], controls)
    labels = engine.cfg.emotion_labels
    return Take(weights, probabilities, labels, engine.cfg.fps, parse_emotion(engine.emotion_setting(controls), labels))


def _run_torch(args: argparse.Namespace, audio: np.ndarray, level: float | str | None, lookahead: int | None) -> Take:
    """The checkpoint's full-context forward pass in PyTorch; `lookahead` in encoder frames (None: the model's)."""
    require_training(f"{PROG} on the checkpoint {args.model} (its full-context PyTorch pass)")
    from .checkpoint import load_model
    from .offline import infer, prototypes_present
    model = load_model(args.model, args.device)
    labels = model.cfg.emotion_labels
    setting = args.emotion if args.emotion is not None else default_emotion(labels, prototypes_present(model))
    emotion, strength = parse_emotion(setting, labels)
    person = parse_person(args.person, model.cfg.n_persons)
    level = parse_level(default_level(setting)) if level is None else level
    weights, probabilities = infer(model, audio, level, person, emotion, strength, lookahead)
    return Take(weights, probabilities, labels, model.cfg.fps, (emotion, strength))


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, _run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
