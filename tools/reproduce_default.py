"""`emotalk-reproduce`: make the bundled default model and the results table of docs/results.md in one command.

    emotalk-reproduce --work runs/default [--install]

Steps, each skipped when its output already exists (so an interrupted run continues):
1. a training corpus (emotalk-corpus, --hours, --seed);
2. the `small` model with the paper's objective (emotalk-train);
3. the ablation without the emotion-disentangling pairs (emotalk-train --no-cross), same budget;
4. a fresh evaluation corpus from another seed, and emotalk-eval of both models on its test split;
5. WORK/results.json and a Markdown table on stdout; with --install, the model is copied into
   the package as the bundled default and exported beside it as the bundled engine artifact
   (hop 20 ms, the model's look-ahead), which the runtime runs on ONNX Runtime.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from emotalk_stream.engine.interface import ENCODER_FRAME_MS
from emotalk_stream.engine.onnx_export import export_artifact
from emotalk_stream.training import corpus, trainer
from emotalk_stream.training.checkpoint import load_model
from emotalk_stream.training.model_files import DEFAULT_ENGINE, DEFAULT_MODEL, model_hash
from emotalk_stream.training.data import by_split, load_folder
from emotalk_stream.training.errors import add_debug_flag, run_cli
from emotalk_stream.training.evaluate import emotion_transfer, evaluate

PROG = "emotalk-reproduce"
ROWS = (
    ("lip_mae", "lip MAE, mouth + jaw (lower is better)"),
    ("lip_max_error", "lip max error (lower)"),
    ("upper_mae", "upper-face MAE (lower)"),
    ("jaw_open_corr", "jawOpen Pearson r (higher)"),
    ("emotion_accuracy", "emotion accuracy, 8 classes (higher)"),
    ("jitter", "jitter, mean abs 2nd difference"),
    ("transfer_lip_mae", "emotion transfer, lip MAE (lower)"),
    ("transfer_upper_mae", "emotion transfer, upper-face MAE (lower)"),
)


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def train_run(args: argparse.Namespace, data: Path, out: Path, cross: bool) -> None:
    if (out / "last" / "trainer.json").exists():
        state = json.loads((out / "last" / "trainer.json").read_text())
        if state["epoch"] >= args.epochs and state.get("finished"):
            return
    argv = ["--config", "small", "--data", str(data), "--out", str(out), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--seed", str(args.seed)]
    if args.max_minutes:
        argv += ["--max-minutes", str(args.max_minutes)]
    if (out / "last" / "trainer.json").exists():
        argv.append("--resume")
    if not cross:
        argv.append("--no-cross")
    log(f"training {out.name} ({'cross + self' if cross else 'self only'})")
    if trainer.main(argv) != 0:
        raise SystemExit(2)


def markdown(results: dict) -> str:
    model, ablation = results["model"], results.get("ablation_no_cross")
    head = "| metric | small (ours) | without pairs | mean-pose baseline | energy baseline |"
    lines = [head, "|---|---|---|---|---|"]
    for key, label in ROWS:
        def cell(scores: dict | None) -> str:
            value = None if scores is None else scores.get(key)
            return "n/a" if value is None else f"{value:.3f}"
        lines.append(f"| {label} | {cell(model)} | {cell(ablation)} | {cell(model['baseline_mean_pose'])} "
                     f"| {cell(model['baseline_energy'])} |")
    lines.append(f"\nGround-truth jitter: {model['jitter_ground_truth']:.3f}. Test split of a fresh corpus "
                 f"(seed {results['eval_corpus']['seed']}), {model['clips']} clips, {model['frames']} frames; "
                 f"emotion transfer over {model['transfer_pairs']} held-out pairs.")
    return "\n".join(lines)


def reproduce(args: argparse.Namespace) -> int:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_data, eval_data = work / "corpus", work / "eval-corpus"
    for folder, hours, seed in ((train_data, args.hours, args.seed), (eval_data, args.eval_hours, args.eval_seed)):
        if not (folder / "metadata.csv").exists():
            log(f"generating {hours} h corpus in {folder} (seed {seed})")
            corpus.generate(folder, hours, seed, workers=args.workers)
    train_run(args, train_data, work / "run", cross=True)
    if not args.skip_ablation:
        train_run(args, train_data, work / "run-no-cross", cross=False)

    clips = load_folder(eval_data)
    test, train_split = by_split(clips, "test"), by_split(clips, "train")
    results: dict = {"train_corpus": {"hours": args.hours, "seed": args.seed},
                     "eval_corpus": {"hours": args.eval_hours, "seed": args.eval_seed, "split": "test"}}
    runs = {"model": work / "run" / "best"}
    if not args.skip_ablation:
        runs["ablation_no_cross"] = work / "run-no-cross" / "best"
    torch.manual_seed(0)
    for key, path in runs.items():
        log(f"evaluating {path} on {len(test)} test clips of the fresh corpus")
        model = load_model(path)
        results[key] = {**evaluate(model, test, train_split, progress=True), **emotion_transfer(model, test),
                        "checkpoint": str(path), "sha256": model_hash(path)}
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    if args.install:
        DEFAULT_MODEL.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "config.json"):
            shutil.copy2(runs["model"] / name, DEFAULT_MODEL / name)
        model = load_model(DEFAULT_MODEL)
        export_artifact(model, model_hash(DEFAULT_MODEL), DEFAULT_ENGINE, "onnx", ENCODER_FRAME_MS,
                        model.cfg.lookahead * ENCODER_FRAME_MS)
        log(f"installed {runs['model']} as the bundled default model ({DEFAULT_MODEL}) and its engine "
            f"({DEFAULT_ENGINE})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/default", help="folder for corpora, runs and results")
    p.add_argument("--hours", type=float, default=3.5, help="training corpus size (default 3.5)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--eval-hours", type=float, default=1.2, help="fresh evaluation corpus size")
    p.add_argument("--eval-seed", type=int, default=2)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-minutes", type=float, default=0.0, help="time budget per training run")
    p.add_argument("--workers", type=int, default=2, help="corpus synthesis processes")
    p.add_argument("--skip-ablation", action="store_true")
    p.add_argument("--install", action="store_true", help="copy the model into the package as the default")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, reproduce, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
