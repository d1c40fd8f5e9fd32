"""`emotalk-reproduce`: make the bundled default model and the results of docs/results.md in one command.

    emotalk-reproduce --work runs/default [--recipe bundled|natural] [--install] [--ablations]

Two recipes. `bundled` (the default) makes the bundled model in two stages. The first trains on
3.5 h of espeak-ng voices with the light augmentation and the raw input level for 11 epochs; its
config then gains the input level normaliser in front. The second fine-tunes it (`emotalk-train
--init`) for 3 epochs on 2 h of flite's natural voices and 1 h of Kokoro-82M's (24 speakers and
mixes of two) with 2.5 h of espeak-ng so that nothing is forgotten, with the lip-aperture loss term
(docs/results.md#real-voices says why), hearing half the clips at the raw level and half through the
normaliser (`--input-level both`). Kokoro's many voices are what make the lips shut on real voices
from run to run (docs/results.md#hearing-both-levels).
`natural` is the second recipe: 2.5 h of espeak-ng and 2 h of flite's natural voices, the
real-microphone augmentation, the level-normalised input, 10 epochs from scratch; measured, and not
better on real voices.

Steps, each skipped when its output already exists (so an interrupted run continues):
1. the corpora: espeak-ng voices (--hours), flite's voices (whose held-out voice awb is part of the
   cross-voice split), Festival's voices (the held-out engine: all cross-voice), for `bundled` a
   2.5 h espeak-ng corpus and 1 h of Kokoro's voices for the second stage (Kokoro's voices must be
   fetched first: `python -m emotalk_stream.training.kokoro_voice --fetch`), and a fresh espeak-ng
   evaluation corpus (--eval-seed); every engine still needed is found before any is used, so a
   missing one stops the run at once with the command that installs it;
2. the `small` model with the paper's objective (and the second stage);
3. with --ablations, at a smaller budget (--ablation-epochs; the main run keeps a snapshot at the
   same step count): without the emotion-disentangling pairs, and for `natural` without the new
   voices and without augmentation; for `bundled` also its second stage without augmentation (at
   the full budget; without the new voices is the first stage, always scored);
4. scores: the fresh corpus's test split, the cross-voice split (also its bilabial closure through
   the engine, which ranks runs as the real recordings do, and the emotion a stream reports as
   each voice's clips play back to back), and the real recordings
   (`emotalk-eval --voices`: default controls, `--emotion auto`, and without the voice gate); for
   `bundled` the first stage too (espeak-ng only: the model without the natural voices);
5. WORK/results.json and Markdown tables on stdout; with --install, the model is copied into the
   package as the bundled default and exported beside it as the bundled engine artifact (hop 20 ms,
   the model's look-ahead), which the runtime runs on ONNX Runtime.

Every kept model is finished by `emotalk-train` with its emotion head refitted on the frozen
encoder (`training/emotion_head.py`; about 1.5 minutes a stage), and every scored model's
cross-voice figures include the stream emotion (about 3 minutes of CPU), both in the timing below.

1 h 32 min (`bundled`, timed: docs/results.md#a-timed-rebuild-from-nothing) or about 1 h 50 min
(`natural`) on 2 cores without --ablations.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from emotalk_stream.engine import Controls, Engine
from emotalk_stream.engine.interface import ENCODER_FRAME_MS
from emotalk_stream.engine.onnx_export import export_artifact
from emotalk_stream.training import corpus, trainer
from emotalk_stream.training.checkpoint import load_model
from emotalk_stream.training.model_files import DEFAULT_ENGINE, DEFAULT_MODEL, model_hash
from emotalk_stream.training.data import by_split, load_folder
from emotalk_stream.training.errors import add_debug_flag, run_cli
from emotalk_stream.training.evaluate import emotion_transfer, evaluate
from emotalk_stream.training.trainer import CALIBRATION_SPLIT, load_corpora
from emotalk_stream.training.voices import find_clips
from emotalk_stream.training.voices_eval import (TARGETS, corpus_closure, evaluate_voices, speaker_stream_emotion,
                                                 target_text)

PROG = "emotalk-reproduce"
RECIPES = {"bundled": (3.5, 11), "natural": (2.5, 10)}  # espeak-ng hours, epochs
TUNE_ESPEAK_HOURS, TUNE_EPOCHS, TUNE_SEED = 2.5, 3, 3  # the bundled recipe's second stage (at most --hours, --epochs)
FESTIVAL_HOURS = 0.3  # Festival's three voices, all in the cross-voice split
KOKORO_HOURS = 1.0  # Kokoro-82M's voices for the bundled recipe's second stage (its held-out voices: calibration)
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


@dataclass(frozen=True)
class Run:
    """One training of the recipe: its folder, data and flags, and its epochs."""

    name: str
    data: tuple[Path, ...]
    epochs: int
    flags: tuple[str, ...] = ()
    snapshots: tuple[int, ...] = ()

    def checkpoint(self, work: Path) -> Path:
        return work / self.name / "best"


def train_run(args: argparse.Namespace, work: Path, run: Run) -> None:
    out = work / run.name
    if (out / "last" / "trainer.json").exists():
        state = json.loads((out / "last" / "trainer.json").read_text())
        if state["epoch"] >= run.epochs and state.get("finished"):
            return
    argv = ["--config", "small", "--data", *map(str, run.data), "--out", str(out), "--epochs", str(run.epochs),
            "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--seed", str(args.seed), *run.flags]
    if run.snapshots:
        argv += ["--snapshot-epochs", *map(str, run.snapshots)]
    if args.max_minutes:
        argv += ["--max-minutes", str(args.max_minutes)]
    if (out / "last" / "trainer.json").exists():
        argv.append("--resume")
    log(f"training {run.name} ({' '.join(run.flags) or 'the recipe'}, {run.epochs} epochs)")
    if trainer.main(argv) != 0:
        raise SystemExit(2)


def markdown(results: dict) -> str:
    """The synthetic and cross-voice tables, then the real-voice figures of every model."""
    columns = list(results["models"])
    lines = ["| metric | " + " | ".join(columns) + " | mean-pose baseline | energy baseline |",
             "|---" * (len(columns) + 3) + "|"]
    first = results["models"][columns[0]]["test"]
    for key, label in ROWS:
        cells = [_cell(results["models"][c]["test"].get(key)) for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells)
                     + f" | {_cell(first['baseline_mean_pose'].get(key))} | {_cell(first['baseline_energy'].get(key))} |")
    lines.append(f"\nTest split of a fresh corpus (seed {results['eval_corpus']['seed']}). Cross-voice split "
                 f"(flite's held-out voice awb and Festival's three voices):\n")
    lines.append("| metric | " + " | ".join(columns) + " | mean-pose baseline |")
    lines.append("|---" * (len(columns) + 2) + "|")
    for key in ("lip_mae", "jaw_open_corr", "emotion_accuracy", "emotion_ece", "upper_mae", "bilabial_closure",
                "stream_emotion_accuracy", "stream_emotion_ece"):
        cells = [_cell(results["models"][c]["xvoice"].get(key)) for c in columns]
        base = results["models"][columns[0]]["xvoice"]["baseline_mean_pose"].get(key)
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {_cell(base)} |")
    lines.append("\nReal recordings (`emotalk-eval --voices`):\n")
    voices = {f"{c} ({v})": results["models"][c]["voices"][v] for c in columns for v in results["models"][c]["voices"]}
    lines.append("| figure | target | " + " | ".join(voices) + " |")
    lines.append("|---" * (len(voices) + 2) + "|")
    for key in TARGETS:
        lines.append(f"| {key} | {target_text(key)} | " + " | ".join(_cell(v["overall"].get(key)) for v in voices.values()) + " |")
    return "\n".join(lines)


def _cell(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def score(path: Path, eval_clips: list, xvoice: list, train_split: list, voice_settings: dict[str, Controls]) -> dict:
    """A checkpoint's figures on the fresh test split, the cross-voice split (`xvoice`, against the
    mean pose of `train_split`) and the real recordings."""
    model = load_model(path)
    test = by_split(eval_clips, "test")
    log(f"scoring {path}: {len(test)} test clips, {len(xvoice)} cross-voice clips, the real recordings")
    engine = Engine.from_checkpoint(path, backend="onnxruntime")
    recordings = find_clips(None)
    return {"checkpoint": str(path), "sha256": model_hash(path),
            "test": {**evaluate(model, test, by_split(eval_clips, "train"), progress=True),
                     **emotion_transfer(model, test)},
            "xvoice": {**evaluate(model, xvoice, train_split, progress=True), **corpus_closure(engine, xvoice),
                       **speaker_stream_emotion(engine, xvoice)},
            "voices": {name: evaluate_voices(engine, recordings, controls=controls)
                       for name, controls in voice_settings.items()}}


def put_normaliser_in_front(checkpoint: Path, flite_clips: list) -> None:
    """The bundled recipe trains on raw espeak-ng audio; as shipped, the model hears the input level
    normaliser, and its emotion head is calibrated on flite's held-out voice (once: it is idempotent)."""
    model = load_model(checkpoint)
    if model.cfg.input_level == "agc":
        return
    model.cfg.input_level = "agc"
    held_out = trainer.load_clips(by_split(flite_clips, CALIBRATION_SPLIT), model.cfg, "calibrating", True)
    model.cfg.emotion_temperature = trainer.fit_emotion_temperature(model, held_out, torch.device("cpu"))
    model.cfg.save(checkpoint / "config.json")
    log(f"{checkpoint}: the input level normaliser in front, emotion temperature {model.cfg.emotion_temperature:.2f}")


def reproduce(args: argparse.Namespace) -> int:
    hours, epochs = RECIPES[args.recipe]
    args.hours = hours if args.hours is None else args.hours
    args.epochs = epochs if args.epochs is None else args.epochs
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundled = args.recipe == "bundled"
    espeak, flite, festival, eval_data = (work / n for n in ("corpus", "corpus-flite", "corpus-festival", "eval-corpus"))
    tune_espeak, kokoro = work / "corpus-tune", work / "corpus-kokoro"
    corpora = [(espeak, args.hours, args.seed, "espeak"), (flite, args.flite_hours, args.seed, "flite"),
               (festival, FESTIVAL_HOURS, args.seed, "festival"), (eval_data, args.eval_hours, args.eval_seed, "espeak")]
    if bundled:
        corpora += [(tune_espeak, min(TUNE_ESPEAK_HOURS, args.hours), args.seed, "espeak"),
                    (kokoro, KOKORO_HOURS, args.seed, "kokoro")]
    missing = [(folder, hours, seed, voices) for folder, hours, seed, voices in corpora
               if not (folder / "metadata.csv").exists()]
    for voices in dict.fromkeys(voices for *_, voices in missing):
        corpus.engine_setup(voices)  # an engine not installed stops here, not after hours of the others
    for folder, hours, seed, voices in missing:
        log(f"generating {hours} h {voices} corpus in {folder} (seed {seed})")
        corpus.generate(folder, hours, seed, workers=args.workers, voices=voices)
    both = (espeak, flite)
    budget = args.ablation_epochs

    def tune_run(name: str, first_stage: Path, augment: str) -> Run:
        """The bundled recipe's second stage: flite's and Kokoro's voices and espeak-ng from the first
        stage's weights, half the clips heard at the raw level as the first stage heard them (hearing
        only the normaliser, or without Kokoro's voices, it lost the lips' closing from run to run:
        docs/results.md#hearing-both-levels)."""
        return Run(name, (tune_espeak, flite, kokoro), min(TUNE_EPOCHS, args.epochs),
                   ("--augment", augment, "--init", str(first_stage), "--seed", str(TUNE_SEED),
                    "--input-level", "both"))

    data, flags = ((espeak,), ("--augment", "light", "--input-level", "raw")) if bundled else (both, ())
    main_run = Run("run", data, args.epochs, flags, snapshots=(budget,) if args.ablations else ())
    train_run(args, work, main_run)
    checkpoints = {"model": main_run.checkpoint(work)}
    eval_clips, flite_clips = load_folder(eval_data), load_folder(flite)
    xvoice_clips = by_split(flite_clips, CALIBRATION_SPLIT) + by_split(load_folder(festival), CALIBRATION_SPLIT)
    if bundled:
        put_normaliser_in_front(checkpoints["model"], flite_clips)
        first_stage = checkpoints["model"]
        tune = tune_run("tune", first_stage, "light")
        train_run(args, work, tune)
        checkpoints = {"model": tune.checkpoint(work), "first_stage": first_stage}
    if args.ablations and bundled:
        no_augment = tune_run("tune-no-augment", first_stage, "none")  # the second stage without augmentation
        train_run(args, work, no_augment)
        checkpoints["without_augmentation"] = no_augment.checkpoint(work)
        checkpoints[f"model_epoch_{budget}"] = work / main_run.name / f"epoch-{budget}"
        no_cross = Run("run-no-cross", data, budget, flags + ("--no-cross",))
        train_run(args, work, no_cross)
        checkpoints["without_pairs"] = no_cross.checkpoint(work)
        for key in (f"model_epoch_{budget}", "without_pairs"):
            put_normaliser_in_front(checkpoints[key], flite_clips)
    elif args.ablations:
        # As many steps as the main run's snapshot: espeak alone has fewer clips per epoch.
        train_both = len(by_split(load_corpora([str(d) for d in both]), "train"))
        espeak_epochs = round(budget * train_both / len(by_split(load_folder(espeak), "train")))
        ablations = {"without_pairs": Run("run-no-cross", both, budget, ("--no-cross",)),
                     "without_new_voices": Run("run-no-voices", (espeak,), espeak_epochs),
                     "without_augmentation": Run("run-no-augment", both, budget, ("--augment", "none"))}
        for run in ablations.values():
            train_run(args, work, run)
        checkpoints[f"model_epoch_{budget}"] = work / main_run.name / f"epoch-{budget}"
        checkpoints.update({key: run.checkpoint(work) for key, run in ablations.items()})

    default, auto = Controls(), Controls(emotion="auto")
    train_corpora = {"espeak_hours": args.hours, "flite_hours": args.flite_hours, "seed": args.seed}
    if bundled:
        train_corpora["kokoro_hours"] = KOKORO_HOURS
    results: dict = {"train_corpora": train_corpora,
                     "eval_corpus": {"hours": args.eval_hours, "seed": args.eval_seed, "split": "test"}, "models": {}}
    torch.manual_seed(0)
    for key, path in checkpoints.items():
        settings = {"default": default}
        if key == "model":
            settings.update({"auto": auto, "no_gate": Controls(voice_gate=False)})
        results["models"][key] = score(path, eval_clips, xvoice_clips, by_split(flite_clips, "train"), settings)
        (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    if args.install:
        DEFAULT_MODEL.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "config.json"):
            shutil.copy2(checkpoints["model"] / name, DEFAULT_MODEL / name)
        model = load_model(DEFAULT_MODEL)
        export_artifact(model, model_hash(DEFAULT_MODEL), DEFAULT_ENGINE, "onnx", ENCODER_FRAME_MS,
                        model.cfg.lookahead * ENCODER_FRAME_MS)
        log(f"installed {checkpoints['model']} as the bundled default model ({DEFAULT_MODEL}) and its engine "
            f"({DEFAULT_ENGINE})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/default", help="folder for corpora, runs and results")
    p.add_argument("--recipe", choices=RECIPES, default="bundled",
                   help="bundled: the bundled model (espeak-ng, then fine-tuned with flite's voices); natural: "
                        "espeak-ng and flite from scratch with the full augmentation")
    p.add_argument("--hours", type=float, default=None,
                   help="espeak-ng training corpus size (default: 3.5 for bundled, 2.5 for natural)")
    p.add_argument("--flite-hours", type=float, default=2.0, help="flite corpus size (default 2)")
    p.add_argument("--seed", type=int, default=1, help="seed of the training corpora and runs (default 1)")
    p.add_argument("--eval-hours", type=float, default=1.2, help="fresh evaluation corpus size")
    p.add_argument("--eval-seed", type=int, default=2, help="seed of the evaluation corpus (default 2)")
    p.add_argument("--epochs", type=int, default=None, help="default: 11 for bundled, 10 for natural")
    p.add_argument("--ablations", action="store_true",
                   help="also train without pairs, without the new voices and without augmentation")
    p.add_argument("--ablation-epochs", type=int, default=3, help="the ablations' budget, in the main run's epochs")
    p.add_argument("--batch-size", type=int, default=8, help="emotalk-train --batch-size (default 8)")
    p.add_argument("--lr", type=float, default=1e-4, help="emotalk-train --lr (default 1e-4)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="time budget per training run")
    p.add_argument("--workers", type=int, default=2, help="corpus synthesis processes")
    p.add_argument("--install", action="store_true", help="copy the model into the package as the default")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, reproduce, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
