"""The trainer on a tiny real corpus: it learns, checkpoints, resumes, and runs under torchrun/DDP."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from emotalk_stream.training import config, corpus, trainer
from emotalk_stream.training.checkpoint import load_model
from emotalk_stream.training.data import by_split, load_folder, pair_groups
from emotalk_stream.training.emotion_head import emotion_labels, pooled_features, refit_emotion_head
from emotalk_stream.training.input_level import model_input
from emotalk_stream.training.losses import EmoTalkLoss
from emotalk_stream.training.model import EmoTalk
from emotalk_stream.training.model_files import model_hash

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "data"
    corpus.generate(out, 0.07, seed=5, workers=2, progress=False)  # 10 sentences: 8 train, 1 val, 1 test
    return out


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--batch-size", "4", "--quiet", *extra]


def test_loss_falls_on_real_pairs(tiny_corpus: Path) -> None:
    torch.manual_seed(0)
    cfg = config.small()
    clips = trainer.load_clips(by_split(load_folder(tiny_corpus), "train"), cfg, "", quiet=True)
    group = pair_groups([c.info for c in clips])[0]
    batch = trainer.collate([(clips[group[0]], clips[group[1]]), (clips[group[1]], clips[group[0]])], 30, None)
    module = EmoTalkLoss(EmoTalk(cfg))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        loss, parts = module(batch, lookahead=2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert set(parts) == {"self", "cross", "velocity", "classification", "lips"}
    assert losses[-1] < 0.5 * losses[0]


@pytest.fixture(scope="module")
def one_epoch(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the paper's objective, trained once: the tests below copy it or train it again."""
    run = tmp_path_factory.mktemp("one-epoch") / "run"
    assert trainer.main(train_args(tiny_corpus, run, "--epochs", "1")) == 0
    return run


def test_train_checkpoints_and_resumes(tiny_corpus: Path, one_epoch: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    first = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(first) == 1 and first[0]["epoch"] == 1
    best = load_model(run / "best")
    assert best.emotion_prototypes.abs().sum() > 0  # filled for --emotion overrides
    assert best.cfg.extra["cross_reconstruction"] is True
    assert 0 < best.cfg.extra["emotion_head_refit"]["val_emotion_accuracy"] <= 1
    assert json.loads((run / "last" / "trainer.json").read_text())["finished"] is True

    assert trainer.main(train_args(tiny_corpus, run, "--epochs", "1")) == 2  # refuses to overwrite
    assert trainer.main(train_args(tiny_corpus, run, "--epochs", "2", "--resume")) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[1]["step"] == 2 * log[0]["step"]


def test_the_emotion_head_is_refitted_on_the_frozen_encoder(tiny_corpus: Path, one_epoch: Path) -> None:
    model = load_model(one_epoch / "best")
    clips = load_folder(tiny_corpus)
    train, val = (trainer.load_clips(by_split(clips, split), model.cfg, "", quiet=True) for split in ("train", "val"))
    head = model.audio_encoder_emo.classifier
    torch.nn.init.zeros_(head.out_proj.weight)  # every clip guessed as the first label
    torch.nn.init.zeros_(head.out_proj.bias)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    truth = torch.tensor([c.emotion for c in val])
    guessed_first = (truth == 0).float().mean().item()

    cpu = torch.device("cpu")
    features, val_features = pooled_features(model, train, cpu), pooled_features(model, val, cpu)
    accuracy = refit_emotion_head(model, features, emotion_labels(train, cpu), val_features, truth)

    with torch.no_grad():
        refitted = (head(val_features).argmax(dim=1) == truth).float().mean().item()
    assert accuracy == refitted > guessed_first  # the head it keeps is the one it reports, and it learned
    after = model.state_dict()
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and all(name.startswith("audio_encoder_emo.classifier.") for name in moved)
    # and it knows where its training clips lie: sure among them, unsure far from them
    trust = head.familiarity(features)
    assert 0 < head.familiar_range[0] <= head.familiar_range[1] and (trust == 1).float().mean() >= 0.95
    assert head.familiarity(head.familiar_mean + 100.0) == 0


def test_init_fine_tunes_from_a_model(tiny_corpus: Path, one_epoch: Path, tmp_path: Path) -> None:
    """--init starts from another model's weights and config (its input level unless told otherwise)."""
    start = load_model(one_epoch / "best")
    run = tmp_path / "tuned"
    assert trainer.main(train_args(tiny_corpus, run, "--epochs", "1", "--init", str(one_epoch / "best"),
                                   "--input-level", "raw")) == 0
    tuned = load_model(run / "best")
    assert tuned.cfg.extra["init"] == {"model": str(one_epoch / "best"), "sha256": model_hash(one_epoch / "best")}
    assert tuned.cfg.input_level == "raw"
    assert start.cfg.input_level == "agc"
    changed = [not torch.equal(a, b) for a, b in zip(start.state_dict().values(), tuned.state_dict().values())]
    assert any(changed)  # trained further, from the start model: much nearer to it than a new model is
    distance = lambda m: sum(float((a - b).abs().sum())  # noqa: E731
                             for a, b in zip(start.state_dict().values(), m.state_dict().values()))
    assert distance(tuned) < 0.5 * distance(EmoTalk(start.cfg))


def test_collate_puts_a_share_of_the_clips_through_the_normaliser(tiny_corpus: Path) -> None:
    clips = trainer.load_clips(by_split(load_folder(tiny_corpus), "train")[:2], config.small(), "", quiet=True)
    heard = {share: trainer.collate([(clips[0], clips[1])], 30, np.random.default_rng(3), "light", share).audio_a[0]
             for share in (0.0, 1.0)}
    n = len(clips[0].audio)  # the first clip's microphone is drawn before its share: the same in both
    assert np.allclose(heard[1.0][:n].numpy(), model_input(heard[0.0][:n].numpy(), "agc"), atol=1e-6)
    assert not np.allclose(heard[1.0][:n].numpy(), heard[0.0][:n].numpy(), atol=1e-3)


def test_a_model_trained_hearing_both_levels_is_finished_hearing_the_normaliser(tiny_corpus: Path, one_epoch: Path,
                                                                                tmp_path: Path) -> None:
    """--input-level both: the weights train on clips heard raw and normalised; the emotion head,
    prototypes and temperature are fitted hearing the normaliser, as the finished model will."""
    run = tmp_path / "tuned"
    assert trainer.main(train_args(tiny_corpus, run, "--epochs", "1", "--init", str(one_epoch / "best"),
                                   "--input-level", "both")) == 0
    assert load_model(run / "last").cfg.input_level == "raw"
    finished = load_model(run / "best")
    assert finished.cfg.input_level == "agc" and finished.cfg.extra["trained_input_level"] == "both"
    train = trainer.load_clips(by_split(load_folder(tiny_corpus), "train"), finished.cfg, "", quiet=True)
    cpu = torch.device("cpu")
    labels = emotion_labels(train, cpu)
    heard = trainer.emotion_prototypes(finished, pooled_features(finished, train, cpu), labels)
    finished.cfg = replace(finished.cfg, input_level="raw")
    raw = trainer.emotion_prototypes(finished, pooled_features(finished, train, cpu), labels)
    assert torch.allclose(finished.emotion_prototypes, heard, atol=1e-5)
    assert not torch.allclose(finished.emotion_prototypes, raw, atol=1e-3)


def test_a_level_the_family_cannot_hear_is_refused(tiny_corpus: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    large = tmp_path / "large.json"  # the large family takes raw input only
    config.large().save(large)
    assert trainer.main(train_args(tiny_corpus, tmp_path / "run", "--epochs", "1", "--config", str(large),
                                   "--input-level", "both")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "agc" in err[0] and not (tmp_path / "run").exists()


def test_init_of_a_missing_model_is_one_clear_line(tiny_corpus: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    assert trainer.main(train_args(tiny_corpus, tmp_path / "run", "--epochs", "1", "--init",
                                   str(tmp_path / "nowhere"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0] and "Traceback" not in err[0]


def test_same_seed_same_weights(tiny_corpus: Path, one_epoch: Path, tmp_path: Path) -> None:
    assert trainer.main(train_args(tiny_corpus, tmp_path / "again", "--epochs", "1")) == 0
    a, b = load_model(one_epoch / "last"), load_model(tmp_path / "again" / "last")
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), key


def test_broken_clip_is_one_clear_line(tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    victim = sorted((data / "clips").glob("*.npy"))[0]
    victim.write_bytes(b"not a numpy file")
    assert trainer.main(train_args(data, tmp_path / "run", "--epochs", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and victim.name in err[0] and "Traceback" not in err[0]


def test_torchrun_ddp_on_two_cpu_processes(tiny_corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "emotalk_stream.training.trainer",
         *train_args(tiny_corpus, run, "--epochs", "1", "--device", "cpu")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((run / "log.jsonl").read_text())
    clips = trainer.load_clips(by_split(load_folder(tiny_corpus), "train"), config.small(), "", quiet=True)
    batches = trainer.epoch_batches(clips, pair_groups([c.info for c in clips]), 4, random.Random(0))
    assert record["step"] == len(batches) // 2  # each rank took its half of the epoch
    weights = load_model(run / "best").state_dict()
    assert all(np.isfinite(t.numpy()).all() for t in weights.values())


def test_emotion_transfer_of_identical_audio_is_self_reconstruction(tiny_corpus: Path) -> None:
    from dataclasses import replace

    from emotalk_stream.training.evaluate import emotion_transfer, evaluate

    torch.manual_seed(0)
    model = EmoTalk(config.small()).eval()
    torch.nn.init.normal_(model.bs_map_r.weight, std=0.2)
    torch.nn.init.constant_(model.bs_map_r.bias, 0.3)
    clips = by_split(load_folder(tiny_corpus), "train")
    a, b = (clips[i] for i in pair_groups(clips)[0][:2])
    twin = replace(a, clip=a.clip + "_twin", emotion=b.emotion)  # same audio, labelled otherwise
    transfer = emotion_transfer(model, [a, twin])
    own = evaluate(model, [a], clips[:4])
    assert transfer["transfer_pairs"] == 2
    assert transfer["transfer_lip_mae"] == pytest.approx(own["lip_mae"], rel=1e-5)
    assert transfer["transfer_upper_mae"] == pytest.approx(own["upper_mae"], rel=1e-5)
    other = emotion_transfer(model, [a, b])  # real emotion transfer differs
    assert other["transfer_lip_mae"] != pytest.approx(own["lip_mae"], rel=1e-3)


def test_augmented_batches_keep_their_shape_and_follow_the_seed(tiny_corpus: Path) -> None:
    cfg = config.small()
    clips = trainer.load_clips(by_split(load_folder(tiny_corpus), "train")[:4], cfg, "", quiet=True)
    pairs = [(clips[0], clips[1]), (clips[2], clips[3])]
    clean = trainer.collate(pairs, 30, None)
    first, again = (trainer.collate(pairs, 30, np.random.default_rng(7)) for _ in range(2))
    assert first.audio_a.shape == clean.audio_a.shape and torch.equal(first.labels_a, clean.labels_a)
    assert torch.equal(first.audio_a, again.audio_a) and not torch.equal(first.audio_a, clean.audio_a)


def test_two_folders_train_together_and_every_kept_model_is_finalised(tiny_corpus: Path, tmp_path: Path) -> None:
    flite = tmp_path / "flite"
    corpus.generate(flite, 0.07, seed=5, workers=2, progress=False, voices="flite")
    clips = trainer.load_corpora([str(tiny_corpus), str(flite)])
    for group in pair_groups(clips):  # pairs never join two folders' sentences
        assert len({clips[i].content.split("/")[0] for i in group}) == 1
    run = tmp_path / "run"
    argv = ["--data", str(tiny_corpus), str(flite), "--out", str(run), "--batch-size", "4", "--quiet",
            "--epochs", "1", "--snapshot-epochs", "1"]
    assert trainer.main(argv) == 0
    best, snapshot = load_model(run / "best"), load_model(run / "epoch-1")
    assert best.cfg.emotion_temperature != 1.0 and best.cfg.extra["data"] == [str(tiny_corpus), str(flite)]
    assert snapshot.cfg.emotion_temperature == best.cfg.emotion_temperature  # one epoch: the same weights
    assert torch.equal(snapshot.emotion_prototypes, best.emotion_prototypes)
    assert (best.emotion_prototypes.abs().sum(dim=1) > 0).sum() >= 4
