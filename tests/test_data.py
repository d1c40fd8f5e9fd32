"""Data folders without our metadata: 3D-ETF/RAVDESS-style wav+npy pairs and Live Link Face takes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.training.audio import write_wav
from emotalk_stream.training.blendshapes import INDEX
from emotalk_stream.training.data import load_folder, pair_groups, read_labels
from emotalk_stream.training.errors import UserError
from emotalk_stream.training.livelink_csv import write_csv


def make_clip(folder: Path, stem: str, seconds: float = 1.0, csv: bool = False) -> np.ndarray:
    frames = int(np.ceil(seconds * 30))
    labels = np.random.default_rng(len(stem)).uniform(0, 1, (frames, 52)).astype(np.float32)
    write_wav(folder / f"{stem}.wav", np.zeros(int(seconds * 16000), dtype=np.float32))
    if csv:
        write_csv(folder / f"{stem}.csv", labels)
    else:
        np.save(folder / f"{stem}.npy", labels)
    return labels


def test_ravdess_names_give_emotion_level_sentence_and_actor(tmp_path: Path) -> None:
    make_clip(tmp_path, "03-01-03-02-01-01-12")  # happy, strong, "kids", actor 12
    make_clip(tmp_path, "03-01-05-01-01-01-12")  # angry, normal, same sentence and actor
    make_clip(tmp_path, "03-01-05-01-02-01-12")  # the other sentence
    clips = {c.clip: c for c in load_folder(tmp_path)}
    happy = clips["03-01-03-02-01-01-12"]
    assert (happy.emotion, happy.level, happy.person, happy.content) == ("happy", 1, 11, "ravdess-01")
    assert clips["03-01-05-01-01-01-12"].emotion == "angry"
    groups = pair_groups(list(clips.values()))
    assert len(groups) == 1 and len(groups[0]) == 2  # same sentence and actor, different emotions


def test_live_link_face_takes_are_read_by_name(tmp_path: Path) -> None:
    labels = make_clip(tmp_path, "MySlate_3_iPhone", seconds=2.0, csv=True)
    (clip,) = load_folder(tmp_path)
    assert clip.labels.suffix == ".csv" and clip.emotion is None
    read = read_labels(clip.labels)
    assert read.shape == labels.shape
    np.testing.assert_allclose(read[:, INDEX["jawLeft"]], labels[:, INDEX["jawLeft"]], atol=1e-6)


def test_broken_label_file_names_the_file(tmp_path: Path) -> None:
    make_clip(tmp_path, "take")
    np.save(tmp_path / "take.npy", np.zeros((10, 51), dtype=np.float32))
    with pytest.raises(UserError, match="take.npy has shape"):
        read_labels(tmp_path / "take.npy")


def test_empty_or_missing_folders_are_clear(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_folder(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no clips"):
        load_folder(tmp_path)
    (tmp_path / "metadata.csv").write_text("clip,content\nx,1\n")
    with pytest.raises(UserError, match="lacks the columns"):
        load_folder(tmp_path)
