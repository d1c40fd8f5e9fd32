"""Live Link Face CSV: the app's layout written exactly, and real recordings read by name at 30 fps."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.training.audio import write_wav
from emotalk_stream.training.blendshapes import (INDEX, LIVELINK_CSV_ORDER, LIVELINK_UDP_ORDER, NAMES,
                                                 ROTATIONS, pascal)
from emotalk_stream.training.errors import UserError
from emotalk_stream.training.livelink_csv import (format_timecode, load_livelink_recording, read_csv,
                                                  write_csv)


def weights(frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((frames, len(NAMES))).astype(np.float32)


def rows_of(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def write_rows(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_written_file_has_the_app_layout(tmp_path: Path) -> None:
    path = tmp_path / "take.csv"
    w = weights(65)
    write_csv(path, w)
    rows = rows_of(path)
    assert rows[0] == ["Timecode", "BlendShapeCount", *LIVELINK_CSV_ORDER]
    assert len(rows) == 66 and all(len(r) == 63 for r in rows)
    assert [r[0] for r in rows[1:4]] == ["00:00:00:00.000", "00:00:00:01.000", "00:00:00:02.000"]
    assert rows[31][0] == "00:00:01:00.000" and rows[65][0] == "00:00:02:04.000"
    assert {r[1] for r in rows[1:]} == {"61"}
    assert all(len(v.split(".")[1]) == 10 for v in rows[1][2:])
    for name in ROTATIONS:
        assert {r[rows[0].index(name)] for r in rows[1:]} == {"0.0000000000"}


def test_columns_are_written_by_name_with_jaw_and_mouth_left_right_swapped(tmp_path: Path) -> None:
    path = tmp_path / "take.csv"
    w = weights(3)
    write_csv(path, w)
    header, first = rows_of(path)[:2]
    for name in NAMES:
        assert float(first[header.index(pascal(name))]) == pytest.approx(w[0, INDEX[name]], abs=1e-9)
    # The CSV's JawLeft sits where the UDP packet has JawRight, and likewise for the mouth.
    for left, right in (("JawLeft", "JawRight"), ("MouthLeft", "MouthRight")):
        assert header.index(left) - 2 == LIVELINK_UDP_ORDER.index(right)
        assert header.index(right) - 2 == LIVELINK_UDP_ORDER.index(left)


def test_round_trip_is_exact_to_ten_decimals(tmp_path: Path) -> None:
    for frames in (1, 7, 95):  # shorter and longer than one second of timecode
        path = tmp_path / f"take{frames}.csv"
        w = weights(frames, seed=frames)
        write_csv(path, w)
        back = read_csv(path)
        assert back.shape == w.shape and back.dtype == np.float32
        np.testing.assert_allclose(back, w, atol=1e-7)


def test_timecode_format() -> None:
    assert format_timecode(0) == "00:00:00:00.000"
    assert format_timecode(30 * 3661 + 29) == "01:01:01:29.000"
    assert format_timecode(119, fps=60) == "00:00:01:59.000"


def _real_style_header(order: list[str]) -> list[str]:
    """A recording's header: NeuroSync's count spelling, an extra column, any column order."""
    return ["Timecode", "BlendshapeCount", *order, "Extra"]


def test_60_fps_timecode_recording_is_resampled_to_30_fps(tmp_path: Path) -> None:
    # 60 fps timecode, captured every frame, starting mid-second like a real take; jawOpen = time.
    order = list(reversed(LIVELINK_CSV_ORDER))
    start_second, start_frame, n = 12 * 3600 + 27 * 60 + 47, 47, 150
    rows = []
    for i in range(n):
        second, frame = divmod(start_frame + i, 60)
        s = start_second + second
        tc = f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}:{frame:02d}.169"
        values = {name: 0.25 for name in order}
        values["JawOpen"] = i / 60 / 3  # reaches 0.83 at the end, no clipping
        values["JawLeft"] = 0.1
        values["MouthRight"] = 0.7
        rows.append([tc, 61, *(values[name] for name in order), "x"])
    path = write_rows(tmp_path / "MySlate_1_iPhone.csv", _real_style_header(order), rows)
    out = read_csv(path)
    assert out.shape == (75, 52)  # 149/60 s -> frames 0..74 at 30 fps
    np.testing.assert_allclose(out[:, INDEX["jawOpen"]], np.arange(75) / 30 / 3, atol=1e-6)
    np.testing.assert_allclose(out[:, INDEX["jawLeft"]], 0.1, atol=1e-7)
    np.testing.assert_allclose(out[:, INDEX["mouthRight"]], 0.7, atol=1e-7)
    np.testing.assert_allclose(out[:, INDEX["browInnerUp"]], 0.25, atol=1e-7)


def test_60_fps_timecode_with_every_second_frame_is_detected(tmp_path: Path) -> None:
    # alexdjulin's recording: 30 fps capture stamped with a 60 fps timecode (steps of 2).
    rows = []
    for i in range(40):
        second, frame = divmod(2 * i, 60)
        rows.append([f"00:00:{second:02d}:{frame:02d}.000", 61, *([i / 100] * 61)])
    path = write_rows(tmp_path / "a.csv", ["Timecode", "BlendShapeCount", *LIVELINK_CSV_ORDER], rows)
    out = read_csv(path)
    assert out.shape == (40, 52)
    np.testing.assert_allclose(out[:, 0], np.arange(40) / 100, atol=1e-6)


def test_short_take_uses_the_source_fps_override(tmp_path: Path) -> None:
    rows = [[f"00:00:00:{f:02d}.000", 61, *([f / 100] * 61)] for f in range(0, 20)]
    path = write_rows(tmp_path / "a.csv", ["timecode", "blendshapecount", *LIVELINK_CSV_ORDER], rows)
    assert read_csv(path).shape == (20, 52)  # guessed as 30 fps
    assert read_csv(path, source_fps=60).shape == (10, 52)


def test_values_outside_the_weight_range_are_clipped(tmp_path: Path) -> None:
    rows = [["00:00:00:00.000", 61, *([1.3] * 52), *([-0.4] * 9)]]
    path = write_rows(tmp_path / "a.csv", ["Timecode", "BlendShapeCount", *LIVELINK_CSV_ORDER], rows)
    assert (read_csv(path) == 1.0).all()


@pytest.mark.parametrize("header, rows, words", [
    (["Timecode", "BlendShapeCount", *[n for n in LIVELINK_CSV_ORDER if n not in ("JawOpen", "TongueOut")]],
     [], "lacks the blendshape columns JawOpen, TongueOut"),
    (["BlendShapeCount", *LIVELINK_CSV_ORDER], [], "no Timecode column"),
    (["Timecode", "BlendShapeCount", *LIVELINK_CSV_ORDER], [], "no frames"),
    (["Timecode", "BlendShapeCount", *LIVELINK_CSV_ORDER],
     [["00:00:00:00.000", 61, *([0] * 61)], ["12-27-47", 61, *([0] * 61)]], "line 3: bad timecode '12-27-47'"),
    (["Timecode", "BlendShapeCount", *LIVELINK_CSV_ORDER],
     [["00:00:00:00.000", 61, "oops", *([0] * 60)]], "line 2: a blendshape value"),
    (["Timecode", "BlendShapeCount", *LIVELINK_CSV_ORDER],
     [["00:00:00:00.000", 61, *([0] * 10)]], "line 2: a blendshape value"),
    (["Timecode", "BlendShapeCount", *LIVELINK_CSV_ORDER],
     [["00:00:01:00.000", 61, *([0] * 61)], ["00:00:00:05.000", 61, *([0] * 61)]], "line 3: timecode"),
])
def test_broken_files_name_the_file_and_the_problem(tmp_path: Path, header: list[str], rows: list,
                                                    words: str) -> None:
    path = write_rows(tmp_path / "take.csv", header, rows)
    with pytest.raises(UserError) as info:
        read_csv(path)
    assert str(path) in str(info.value) and words in str(info.value)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match="empty"):
        read_csv(tmp_path / "empty.csv")
    with pytest.raises(UserError, match="cannot read"):
        read_csv(tmp_path / "missing.csv")


def test_recording_loader_pairs_the_wav_and_cuts_to_the_shorter(tmp_path: Path) -> None:
    csv_path = tmp_path / "MySlate_3_iPhone.csv"
    write_csv(csv_path, weights(45))  # 1.5 s
    write_wav(tmp_path / "MySlate_3_iPhone.wav", np.zeros(16000 + 8000 + 3000, dtype=np.float32))
    audio, w = load_livelink_recording(csv_path)
    assert len(audio) == 24000 and w.shape == (45, 52)
    write_wav(tmp_path / "short.wav", np.zeros(16000, dtype=np.float32))
    audio, w = load_livelink_recording(csv_path, tmp_path / "short.wav")
    assert len(audio) == 16000 and w.shape == (30, 52)


def test_recording_loader_refuses_a_wav_of_another_take(tmp_path: Path) -> None:
    csv_path = tmp_path / "take.csv"
    write_csv(csv_path, weights(30))
    with pytest.raises(UserError, match="no audio"):
        load_livelink_recording(csv_path)
    write_wav(tmp_path / "take.wav", np.zeros(16000 * 5, dtype=np.float32))
    with pytest.raises(UserError, match="not the same take"):
        load_livelink_recording(csv_path)
