"""`emotalk-train`: train an EmoTalk model on a data folder with the paper's objective.

    emotalk-train --config small --data DATA --out RUN [--epochs N] [--resume]
    emotalk-train --init default --data DATA --out RUN --epochs 3      # fine-tune a model
    torchrun --standalone --nproc-per-node 2 -m emotalk_stream.training.trainer --config small --data DATA --out RUN

Writes RUN/last (weights + optimizer, for --resume), RUN/best (lowest validation loss, with its
emotion head refitted on the frozen encoder and the emotion prototypes that --emotion overrides use)
and RUN/log.jsonl (one line per epoch).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from . import config as config_mod
from .audio import read_audio
from .augment import augment, light_augment
from .calibration import fit_temperature
from .checkpoint import load_model, save_checkpoint
from .data import ClipInfo, by_split, frame_warp, load_folder, pair_groups, read_alignment, read_labels
from .emotion_head import emotion_labels, pooled_features, refit_emotion_head
from .errors import UserError, add_debug_flag, run_cli
from .input_level import MODES, model_input
from .losses import EmoTalkLoss, PairBatch, masked_mse
from .model import EmoTalk
from .model_files import model_hash, resolve_checkpoint

PROG = "emotalk-train"
AUGMENTATIONS = ("full", "light", "none")
BOTH_NORMALISED_SHARE = 0.5  # --input-level both: the share of training clips heard through the normaliser
CALIBRATION_SPLIT = "xvoice"  # the corpus's held-out voices: the emotion head is calibrated on them


@dataclass
class LoadedClip:
    info: ClipInfo
    audio: np.ndarray  # float32 16 kHz
    labels: np.ndarray  # (T, 52)
    emotion: int
    alignment: list[tuple[float, float, str]] | None

    @property
    def seconds(self) -> float:
        return len(self.audio) / 16000


def load_clips(infos: list[ClipInfo], cfg: config_mod.ModelConfig, desc: str, quiet: bool) -> list[LoadedClip]:
    labels = {name: i for i, name in enumerate(cfg.emotion_labels)}
    loaded = []
    for info in tqdm(infos, desc=desc, unit="clip", disable=quiet, file=sys.stderr):
        if info.emotion is None:
            raise UserError(f"clip {info.clip} has no emotion label; training needs labelled clips "
                            "(a metadata.csv as emotalk-corpus writes, or RAVDESS-style names)")
        if info.emotion not in labels:
            raise UserError(f"clip {info.clip} has emotion {info.emotion!r}, which model config "
                            f"{cfg.family} does not know ({', '.join(cfg.emotion_labels)})")
        loaded.append(LoadedClip(
            info=info, audio=read_audio(info.wav, cfg.sample_rate), labels=read_labels(info.labels),
            emotion=labels[info.emotion],
            alignment=read_alignment(info.align) if info.align else None,
        ))
    return loaded


def load_corpora(folders: list[str]) -> list[ClipInfo]:
    """The clips of one or more data folders; content ids are kept apart per folder, so pairs never
    join two folders' sentences."""
    if len(folders) == 1:
        return load_folder(Path(folders[0]))
    return [replace(clip, content=f"{i}/{clip.content}")
            for i, folder in enumerate(folders) for clip in load_folder(Path(folder))]


def warp_positions(a: LoadedClip, b: LoadedClip, fps: int) -> np.ndarray:
    """For each frame of A, the fractional frame of B at the same spoken position."""
    return frame_warp(a.alignment, b.alignment, a.seconds, b.seconds, len(a.labels), fps)


def _pad(arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(a) for a in arrays)
    out = np.zeros((len(arrays), length) + arrays[0].shape[1:], dtype=np.float32)
    valid = np.zeros((len(arrays), length), dtype=bool)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = a
        valid[i, :len(a)] = True
    return torch.from_numpy(out), torch.from_numpy(valid)


def collate(pairs: list[tuple[LoadedClip, LoadedClip]], fps: int, rng: np.random.Generator | None,
            augmentation: str = "full", normalised_share: float = 0.0) -> PairBatch:
    """A batch of pairs; with `rng`, each clip augmented: "full", through a random microphone, room
    and level, with babble made from the batch's other clips; "light", a small gain and noise floor;
    then that share of the clips put through the input level normaliser (`--input-level both`)."""
    clips = [clip for pair in pairs for clip in pair]

    def microphone(clip: LoadedClip) -> np.ndarray:
        if rng is None or augmentation == "none":
            return clip.audio
        if augmentation == "light":
            return light_augment(clip.audio, rng)
        return augment(clip.audio, clip.alignment, rng, [c.audio for c in clips if c is not clip])

    def prep(clip: LoadedClip) -> np.ndarray:
        heard = microphone(clip)
        # no draw at all without a share: runs without --input-level both keep their augmentation
        if rng is not None and normalised_share and rng.random() < normalised_share:
            return model_input(heard, "agc")
        return heard

    audio_a, _ = _pad([prep(a) for a, _ in pairs])
    audio_b, _ = _pad([prep(b) for _, b in pairs])
    labels_a, valid_a = _pad([a.labels for a, _ in pairs])
    labels_b, valid_b = _pad([b.labels for _, b in pairs])
    warp_ab, _ = _pad([warp_positions(a, b, fps).astype(np.float32) for a, b in pairs])
    warp_ba, _ = _pad([warp_positions(b, a, fps).astype(np.float32) for a, b in pairs])
    long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return PairBatch(
        audio_a=audio_a, audio_b=audio_b, labels_a=labels_a, labels_b=labels_b,
        valid_a=valid_a, valid_b=valid_b, warp_ab=warp_ab, warp_ba=warp_ba,
        emotion_a=long([a.emotion for a, _ in pairs]), emotion_b=long([b.emotion for _, b in pairs]),
        level_a=long([a.info.level for a, _ in pairs]), level_b=long([b.info.level for _, b in pairs]),
        person=long([a.info.person for a, _ in pairs]),
    )


def epoch_batches(clips: list[LoadedClip], groups: list[list[int]], batch_size: int,
                  rng: random.Random) -> list[list[tuple[int, int]]]:
    """Every clip once as A, each with a random partner of another emotion from its group;
    batches of similar length so little padding is computed."""
    pairs = []
    for group in groups:
        for i in group:
            partners = [j for j in group if clips[j].emotion != clips[i].emotion]
            pairs.append((i, rng.choice(partners)))
    rng.shuffle(pairs)
    window = batch_size * 32
    batches = []
    for start in range(0, len(pairs), window):
        chunk = sorted(pairs[start:start + window], key=lambda p: len(clips[p[0]].audio))
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@torch.inference_mode()
def validate(model: EmoTalk, clips: list[LoadedClip], device: torch.device, batch_size: int) -> dict[str, float]:
    """Offline self-reconstruction on the validation split at the config's look-ahead."""
    from .blendshapes import INDEX, LIP

    model.eval()
    losses, lip_errors, correct = [], [], 0
    jaw_pred, jaw_true = [], []
    for start in range(0, len(clips), batch_size):
        group = clips[start:start + batch_size]
        audio, _ = _pad([c.audio for c in group])
        labels, valid = _pad([c.labels for c in group])
        audio, labels, valid = audio.to(device), labels.to(device), valid.to(device)
        content, memory, logits = model.encode(audio, labels.shape[1], valid=valid)
        pred = model.decode(content, memory,
                            torch.tensor([c.info.level for c in group], device=device),
                            torch.tensor([c.info.person for c in group], device=device))
        losses.append(float(masked_mse(pred, labels, valid)) * len(group))
        correct += int((logits.argmax(-1).cpu() == torch.tensor([c.emotion for c in group])).sum())
        mask = valid.cpu().numpy()
        p, t = pred.cpu().numpy()[mask], labels.cpu().numpy()[mask]
        lip_errors.append(np.abs(p[:, LIP] - t[:, LIP]).mean(axis=1))
        jaw_pred.append(p[:, INDEX["jawOpen"]])
        jaw_true.append(t[:, INDEX["jawOpen"]])
    model.train()
    jp, jt = np.concatenate(jaw_pred), np.concatenate(jaw_true)
    return {
        "val_loss": sum(losses) / len(clips),
        "val_lip_mae": float(np.concatenate(lip_errors).mean()),
        "val_jaw_open_corr": float(np.corrcoef(jp, jt)[0, 1]) if jp.std() > 0 else 0.0,
        "val_emotion_accuracy": correct / len(clips),
    }


@torch.no_grad()
def emotion_prototypes(model: EmoTalk, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean emotion memory per label over the training clips, from their pooled emotion features
    (`emotion_head.pooled_features`; the memory map is affine, so it maps a clip's mean feature to
    its mean memory): the targets of --emotion LABEL."""
    n_labels = len(model.cfg.emotion_labels)
    memory = model.audio_feature_map_emo(features)
    total = torch.zeros(n_labels, memory.shape[-1], device=memory.device).index_add_(0, labels, memory)
    count = torch.bincount(labels, minlength=n_labels).to(memory.dtype)
    return total / count.clamp(min=1)[:, None]


@torch.inference_mode()
def fit_emotion_temperature(model: EmoTalk, clips: list[LoadedClip], device: torch.device) -> float:
    """The temperature that calibrates the emotion head on `clips` (held-out voices where the data
    has them: they are over-confident as real voices are)."""
    model.eval()
    logits = [model.encode_emotion(torch.from_numpy(c.audio)[None].to(device), len(c.labels))[1][0].cpu().numpy()
              for c in clips]
    model.train()
    return fit_temperature(np.stack(logits), np.array([c.emotion for c in clips]))


def finalise(folder: Path, train_clips: list[LoadedClip], val_clips: list[LoadedClip],
             calibration: list[LoadedClip], device: torch.device, provenance: dict, quiet: bool = True,
             input_level: str | None = None) -> float:
    """Make a checkpoint usable: its emotion head refitted on the frozen encoder (`emotion_head`),
    its emotion prototypes (what --emotion LABEL blends towards) and its calibrated emotion
    temperature, all hearing `input_level` (the model's own by default) as it will be run; returns
    the temperature."""
    model = load_model(folder, device=device)
    if input_level is not None:
        model.cfg = replace(model.cfg, input_level=input_level)
    features, labels = pooled_features(model, train_clips, device, quiet), emotion_labels(train_clips, device)
    accuracy = refit_emotion_head(model, features, labels, pooled_features(model, val_clips, device, quiet),
                                  emotion_labels(val_clips, device))
    provenance = {**provenance, "emotion_head_refit": {"val_emotion_accuracy": accuracy}}
    model.emotion_prototypes.copy_(emotion_prototypes(model, features, labels))  # the head does not change them
    model.cfg.emotion_temperature = fit_emotion_temperature(model, calibration, device)
    save_checkpoint(model, folder, extra=provenance)
    return model.cfg.emotion_temperature


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path, state: dict) -> None:
    tensors = {}
    for index, param_state in optimizer.state_dict()["state"].items():
        for key, value in param_state.items():
            tensors[f"{index}.{key}"] = torch.as_tensor(value).contiguous()
    save_file(tensors, str(folder / "optimizer.safetensors"))
    (folder / "trainer.json").write_text(json.dumps(state, indent=2) + "\n")


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> dict:
    tensors = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    return json.loads((folder / "trainer.json").read_text())


def hearing(cfg: config_mod.ModelConfig, level: str | None) -> config_mod.ModelConfig:
    """`cfg` as training hears: `level` (--input-level) where one is given. "both" trains at the raw
    level (`collate` normalises a share of the clips) and finishes hearing the normaliser, so the
    family must be able to take it: refused here, before the data loads, if it cannot."""
    if level is None:
        return cfg
    if level == "both":
        replace(cfg, input_level="agc")  # raises the UserError of a family that cannot take it
        return replace(cfg, input_level="raw")
    return replace(cfg, input_level=level)


def resolve_config(name: str) -> config_mod.ModelConfig:
    if name in config_mod.PRESETS:
        return config_mod.preset(name)
    return config_mod.ModelConfig.load(Path(name))


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but CUDA is not available; use --device cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def train(args: argparse.Namespace) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    main_rank = rank == 0
    quiet = args.quiet or not main_rank
    out = Path(args.out)
    resume_from = out / "last"
    if args.resume and not (resume_from / "trainer.json").exists():
        raise UserError(f"--resume: no checkpoint at {resume_from}; start without --resume")
    if not args.resume and (out / "last").exists():
        raise UserError(f"{out} already holds a run; add --resume to continue it or choose another --out")
    init = None  # where a fine-tuning run starts (name, weights' hash); checked before the data loads
    if args.init and not args.resume:
        init = {"model": str(args.init), "sha256": model_hash(resolve_checkpoint(args.init))}

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    cfg = hearing(resolve_config(args.config), args.input_level)
    clips = load_corpora(args.data)
    train_clips = load_clips(by_split(clips, "train"), cfg, "loading train", quiet)
    val_clips = load_clips(by_split(clips, "val")[: args.val_limit], cfg, "loading val", quiet)
    groups = pair_groups([c.info for c in train_clips])
    if not groups:
        raise UserError(f"{' '.join(args.data)} has no cross-reconstruction pairs (same content and person, "
                        "different emotions) in its train split; generate it with emotalk-corpus")

    if args.resume or args.init:
        model = load_model(resume_from if args.resume else args.init, device=device)
        if args.init:
            model.cfg = hearing(model.cfg, args.input_level)
        cfg = model.cfg
    else:
        model = EmoTalk(cfg).to(device)
    both = args.input_level == "both"
    model.train()  # load_model hands models out in eval mode; dropout belongs to training
    loss_module: nn.Module = EmoTalkLoss(model, cross=not args.no_cross).to(device)
    if world > 1:
        loss_module = nn.parallel.DistributedDataParallel(loss_module)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    state = {"epoch": 0, "step": 0, "best_val_loss": math.inf}
    if args.resume:
        state = load_optimizer(optimizer, resume_from)
        init = state.get("init")
    state["init"] = init
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        params = sum(p.numel() for p in model.parameters())
        print(f"{PROG}: {cfg.family} model, {params / 1e6:.2f} M parameters, {len(train_clips)} train clips "
              f"({sum(c.seconds for c in train_clips) / 3600:.2f} h), {len(groups)} pair groups, "
              f"{'cross + self' if not args.no_cross else 'self only (ablation)'}, {world} process(es) on {device}",
              file=sys.stderr)

    started = time.monotonic()
    state["finished"] = False
    max_lookahead = cfg.content.max_lookahead if cfg.content.kind == "streaming" else 0
    for epoch in range(state["epoch"], args.epochs):
        rng = random.Random(args.seed * 1000 + epoch)
        aug_rng = np.random.default_rng([args.seed, epoch, rank])
        batches = epoch_batches(train_clips, groups, args.batch_size, rng)
        per_rank = len(batches) // world
        mine = batches[rank::world][:per_rank]
        totals: dict[str, float] = {}
        bar = tqdm(mine, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", disable=quiet, file=sys.stderr)
        for batch_pairs in bar:
            batch = collate([(train_clips[i], train_clips[j]) for i, j in batch_pairs], cfg.fps, aug_rng,
                            args.augment, BOTH_NORMALISED_SHARE if both else 0.0)
            lookahead = rng.randint(0, max_lookahead)
            loss, parts = loss_module(batch.to(device), lookahead)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss = loss.detach()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            state["step"] += 1
            for name, value in parts.items():
                totals[name] = totals.get(name, 0.0) + value
            bar.set_postfix(loss=f"{loss.item():.4f}")
        state["epoch"] = epoch + 1
        if main_rank:
            metrics = validate(model, val_clips, device, args.batch_size * 2)
            record = {"epoch": epoch + 1, "step": state["step"], "minutes": (time.monotonic() - started) / 60,
                      **{f"train_{k}": v / max(1, len(mine)) for k, v in totals.items()}, **metrics}
            with (out / "log.jsonl").open("a") as log:
                log.write(json.dumps(record) + "\n")
            if not args.quiet:
                print(f"{PROG}: epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                                                 if isinstance(v, float)), file=sys.stderr)
            if metrics["val_loss"] < state["best_val_loss"]:
                state["best_val_loss"] = metrics["val_loss"]
                save_checkpoint(model, out / "best", extra={"epoch": epoch + 1, **metrics})
            save_checkpoint(model, out / "last", extra={"epoch": epoch + 1})
            save_optimizer(optimizer, out / "last", state)
            if epoch + 1 in args.snapshot_epochs:
                save_checkpoint(model, out / f"epoch-{epoch + 1}", extra={"epoch": epoch + 1})
        if args.max_minutes and (time.monotonic() - started) / 60 > args.max_minutes:
            if main_rank and not args.quiet:
                print(f"{PROG}: stopping after {args.max_minutes} minutes (--max-minutes); "
                      "continue with --resume", file=sys.stderr)
            break
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if main_rank:
        provenance = {"data": [str(d) for d in args.data], "seed": args.seed, "init": init,
                      "cross_reconstruction": not args.no_cross, "augmentation": args.augment,
                      "trained_input_level": "both" if both else cfg.input_level}
        held_out = CALIBRATION_SPLIT if any(c.split == CALIBRATION_SPLIT for c in clips) else "val"
        calibration = load_clips(by_split(clips, held_out)[: args.val_limit], cfg, f"calibrating on {held_out}", quiet)
        level = "agc" if both else None
        temperature = finalise(out / "best", train_clips, val_clips, calibration, device, provenance, quiet, level)
        for n in args.snapshot_epochs:
            if n <= state["epoch"]:
                finalise(out / f"epoch-{n}", train_clips, val_clips, calibration, device, provenance, quiet, level)
        state["finished"] = True  # best/ now has its emotion prototypes
        (out / "last" / "trainer.json").write_text(json.dumps(state, indent=2) + "\n")
        print(f"{PROG}: best model (validation loss {state['best_val_loss']:.5f}, emotion temperature "
              f"{temperature:.2f} from the {held_out} split) in {out / 'best'}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small", help="small, large, or a config.json (default: small)")
    p.add_argument("--data", required=True, nargs="+",
                   help="data folders (emotalk-corpus output or wav+npy pairs), trained on together")
    p.add_argument("--out", required=True, help="run folder for checkpoints and the log")
    p.add_argument("--epochs", type=int, default=20, help="passes over the training pairs (default: 20)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step (two clips each)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (the paper's 1e-4)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights, the pairing and the augmentation of each epoch (default: 0)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: CUDA where there is a GPU, else the CPU (default: auto)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument("--init", metavar="MODEL",
                   help="fine-tune: start from this model's weights and config (default, a checkpoint folder); "
                        "--config is then ignored")
    p.add_argument("--no-cross", action="store_true",
                   help="ablation: train without cross-reconstruction (self reconstruction only)")
    p.add_argument("--augment", choices=AUGMENTATIONS, default="full",
                   help="full: real-microphone conditions (rooms, noise, bandwidth, levels, gates; the default); "
                        "light: +-4 dB and a faint noise floor (the first recipe); none: the clean corpus audio")
    p.add_argument("--input-level", choices=(*MODES, "both"), default=None,
                   help="agc: the model hears level-normalised audio (the small preset's); raw: as recorded; "
                        "both: half the training clips each way at random, and the finished model hears agc "
                        "(the bundled recipe's second stage; default: the config's)")
    p.add_argument("--snapshot-epochs", type=int, nargs="*", default=[], metavar="N",
                   help="also keep the model after these epochs (RUN/epoch-N, finalised like best/): "
                        "ablations at a smaller budget compare with them")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop after the epoch that passes this time")
    p.add_argument("--val-limit", type=int, default=400, help="validation clips per epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, train, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
