"""Recording a stream: Live Link Face CSV row by row, or a NumPy array; one row per frame of audio."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.streamer.frames import OutFrame, neutral_frame
from emotalk_stream.streamer.head_motion import REST, Motion, Rotation
from emotalk_stream.streamer.recorder import Recorder
from emotalk_stream.training.blendshapes import ROTATIONS
from emotalk_stream.training.errors import UserError
from emotalk_stream.training.livelink_csv import csv_header, read_csv
from waiting import wait_for

FPS = 30


def weights(frames: int) -> np.ndarray:
    return np.random.default_rng(frames).random((frames, 52)).astype(np.float32)


def record(path: Path, w: np.ndarray, first_release: float = 0.0) -> Recorder:
    """Stream `w` through a Recorder and close it with the neutral frame, as the streamer does."""
    recorder = Recorder(path)
    recorder.open()
    for i, row in enumerate(w):
        recorder.submit(OutFrame(i, i / FPS, FPS, row), first_release if i == 0 else 0.0)
    recorder.close(neutral_frame(len(w), FPS))
    return recorder


def test_csv_reads_back_as_the_frames_without_the_final_one(tmp_path: Path) -> None:
    w = weights(47)
    path = tmp_path / "take.csv"
    recorder = record(path, w)
    lines = path.read_text().splitlines(keepends=True)
    assert lines[0] == csv_header() and len(lines) == 1 + 47
    assert lines[-1].startswith("00:00:01:16.000,61,")
    back = read_csv(path)
    assert back.shape == (47, 52)
    np.testing.assert_allclose(back, w, atol=1e-7)
    assert recorder.recorded == 47 and recorder.errors == 0


def test_csv_rotation_columns_hold_the_head_and_eyes_as_live_link_does(tmp_path: Path) -> None:
    motions = [Motion(Rotation(pitch=2.7, yaw=-4.5, roll=1.8), Rotation(pitch=-3.6, yaw=5.4)),
               Motion(None, Rotation(pitch=0.9, yaw=0.0)), None]
    recorder = Recorder(tmp_path / "take.csv")
    recorder.open()
    for i, motion in enumerate(motions):
        recorder.submit(OutFrame(i, i / FPS, FPS, weights(3)[i], motion=motion))
    recorder.close(neutral_frame(3, FPS, Motion(REST, REST)))
    lines = (tmp_path / "take.csv").read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    assert len(rows) == 3 and header[-9:] == list(ROTATIONS)
    cells = [{name: float(row[header.index(name)]) for name in ROTATIONS} for row in rows]
    assert cells[0] == pytest.approx({"HeadYaw": -4.5 / 180, "HeadPitch": 2.7 / 180, "HeadRoll": 1.8 / 180,
                                      "LeftEyeYaw": 5.4 / 180, "LeftEyePitch": -3.6 / 180, "LeftEyeRoll": 0.0,
                                      "RightEyeYaw": 5.4 / 180, "RightEyePitch": -3.6 / 180, "RightEyeRoll": 0.0},
                                     abs=1e-10)
    assert cells[1]["HeadPitch"] == 0.0 and cells[1]["LeftEyePitch"] == pytest.approx(0.9 / 180, abs=1e-10)
    assert not any(cells[2].values())
    np.testing.assert_allclose(read_csv(tmp_path / "take.csv"), weights(3), atol=1e-7)  # the shapes unchanged


def test_csv_rows_are_on_disk_as_they_come(tmp_path: Path) -> None:
    path = tmp_path / "live.csv"
    recorder = Recorder(path)
    recorder.open()
    try:
        w = weights(5)
        for i, row in enumerate(w):
            recorder.submit(OutFrame(i, i / FPS, FPS, row))
        wait_for(lambda: recorder.recorded == 5)
        # Still open: a crash now would keep every row written so far.
        assert len(path.read_text().splitlines()) == 1 + 5
    finally:
        recorder.close()


def test_npy_is_the_frames_in_emotalk_order_without_the_final_one(tmp_path: Path) -> None:
    w = weights(33)
    record(tmp_path / "take.npy", w)
    back = np.load(tmp_path / "take.npy")
    assert back.shape == (33, 52) and back.dtype == np.float32
    np.testing.assert_array_equal(back, w)


def test_an_empty_recording_is_a_valid_empty_array(tmp_path: Path) -> None:
    record(tmp_path / "none.npy", weights(0))
    assert np.load(tmp_path / "none.npy").shape == (0, 52)


def test_a_backlog_is_written_in_full_never_dropped(tmp_path: Path) -> None:
    # The first frame holds the writer for a moment while 199 more queue up behind it, far more
    # than a network sink keeps.
    w = weights(200)
    recorder = record(tmp_path / "burst.csv", w, first_release=time.monotonic() + 0.2)
    assert recorder.drops == 0 and recorder.recorded == 200
    assert read_csv(tmp_path / "burst.csv").shape == (200, 52)


def test_unknown_extension_names_the_two_choices(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"take\.wav.*\.csv.*\.npy"):
        Recorder(tmp_path / "take.wav")


def test_a_folder_that_does_not_exist_is_refused_not_created(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"cannot record to .*take\.csv: the folder .*takes does not exist"):
        Recorder(tmp_path / "takes" / "take.csv")
    assert not (tmp_path / "takes").exists()


def test_unwritable_path_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    recorder = Recorder(tmp_path / "a_file" / "take.csv")
    with pytest.raises(UserError, match="cannot write .*take.csv.*writable"):
        recorder.open()
