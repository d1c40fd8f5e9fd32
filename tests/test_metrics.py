"""Metrics on cases computable by hand, vertex errors on a rig with known geometry, the baselines."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.training.blendshapes import INDEX, LIP, NAMES, UPPER, camel
from emotalk_stream.training.errors import UserError
from emotalk_stream.training.metrics import (baseline_energy, baseline_mean_pose, emotion_accuracy,
                                             eve_mm, frame_loudness, jaw_open_corr, jitter, lip_mae,
                                             lip_max_error, load_templates, lve_mm, score_clips, upper_mae)

JAW = INDEX["jawOpen"]


def labels(frames: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((frames, len(NAMES)))


def test_perfect_prediction() -> None:
    y = labels()
    assert lip_mae(y, y) == lip_max_error(y, y) == upper_mae(y, y) == 0.0
    assert jaw_open_corr(y, y) == pytest.approx(1.0)


def test_known_offsets() -> None:
    y = labels()
    pred = y.copy()
    pred[:, list(LIP)] += 0.1
    assert lip_mae(pred, y) == pytest.approx(0.1)
    assert lip_max_error(pred, y) == pytest.approx(0.1)
    assert upper_mae(pred, y) == 0.0
    pred = y.copy()
    pred[:, JAW] -= 0.2  # one lip channel: the mean spreads it, the max finds it
    assert lip_mae(pred, y) == pytest.approx(0.2 / len(LIP))
    assert lip_max_error(pred, y) == pytest.approx(0.2)
    pred = y.copy()
    pred[::2, INDEX["browInnerUp"]] += 0.5  # half the frames, one upper channel
    assert upper_mae(pred, y) == pytest.approx(0.25 / len(UPPER))
    assert lip_mae(pred, y) == 0.0


def test_jaw_open_correlation() -> None:
    y = labels()
    assert jaw_open_corr(2 * y + 0.1, y) == pytest.approx(1.0)
    assert jaw_open_corr(1 - y, y) == pytest.approx(-1.0)
    constant = np.tile(y.mean(axis=0), (len(y), 1))
    assert jaw_open_corr(constant, y) == 0.0


def test_jitter() -> None:
    ramp = np.tile(np.linspace(0, 1, 30)[:, None], (1, len(NAMES)))
    assert jitter(ramp) == pytest.approx(0.0)
    shake = np.zeros((30, len(NAMES)))
    shake[1::2, 0] = 0.3  # 0, a, 0, a ...: every second difference is 2a on one channel of 52
    assert jitter(shake) == pytest.approx(2 * 0.3 / len(NAMES))
    assert jitter(shake[:2]) == 0.0


def test_emotion_accuracy() -> None:
    assert emotion_accuracy([0, 1, 2], [0, 1, 1]) == pytest.approx(2 / 3)
    assert emotion_accuracy([], []) is None


def test_pooling_never_differences_across_clips() -> None:
    a, b = np.zeros((10, len(NAMES))), np.ones((20, len(NAMES)))
    scores = score_clips([a, b], [a, b])
    assert scores["jitter"] == 0.0 and scores["frames"] == 30 and scores["lip_mae"] == 0.0


# -- vertex metrics on a rig with known geometry (metres) --

def rig(tmp_path: Path, file_order: list[str] | None = None, **changes: np.ndarray) -> Path:
    """Four vertices; jawOpen drops lip vertex 0 by 10 mm and lip vertex 1 by 4 mm, mouthSmileLeft
    moves vertex 1 by (3, 4, 0) mm, browInnerUp lifts vertex 3 by 5 mm. Saved as absolute meshes."""
    neutral = np.array([[0.0, 0.0, 0.1], [0.01, 0.0, 0.1], [0.0, 0.05, 0.1], [0.0, 0.08, 0.09]])
    offsets = np.zeros((len(NAMES), 4, 3))
    offsets[JAW, 0] = (0, -0.010, 0)
    offsets[JAW, 1] = (0, -0.004, 0)
    offsets[INDEX["mouthSmileLeft"], 1] = (0.003, 0.004, 0)
    offsets[INDEX["browInnerUp"], 3] = (0, 0.005, 0)
    arrays = {"neutral": neutral, "blendshapes": neutral[None] + offsets,
              "lip_vertices": np.array([0, 1]), "upper_vertices": np.array([2, 3])}
    if file_order is not None:
        arrays["blendshapes"] = arrays["blendshapes"][[NAMES.index(camel(n)) for n in file_order]]
        arrays["names"] = np.array(file_order)
    arrays.update(changes)
    path = tmp_path / "rig.npz"
    np.savez(path, **arrays)
    return path


def test_lve_is_the_per_frame_max_lip_distance_in_mm(tmp_path: Path) -> None:
    templates = load_templates(rig(tmp_path))
    true = np.zeros((2, len(NAMES)))
    pred = true.copy()
    pred[0, JAW] = 0.5  # vertex 0 off by 5 mm, vertex 1 by 2 mm -> 5
    pred[1, JAW] = 0.2  # 2 mm and 0.8 mm -> 2
    assert lve_mm(pred, true, templates) == pytest.approx(3.5)
    assert lve_mm(pred, true, templates, squared=True) == pytest.approx((25 + 4) / 2)
    assert eve_mm(pred, true, templates) == 0.0


def test_lve_is_euclidean_over_xyz(tmp_path: Path) -> None:
    templates = load_templates(rig(tmp_path))
    true = np.zeros((1, len(NAMES)))
    pred = true.copy()
    pred[0, INDEX["mouthSmileLeft"]] = 1.0  # (3, 4, 0) mm -> 5 mm
    assert lve_mm(pred, true, templates) == pytest.approx(5.0)
    pred[0, INDEX["browInnerUp"]] = 0.4
    assert eve_mm(pred, true, templates) == pytest.approx(2.0)


def test_names_in_the_file_map_blendshapes_by_name(tmp_path: Path) -> None:
    shuffled = list(np.random.default_rng(1).permutation(NAMES))
    templates = load_templates(rig(tmp_path, file_order=[n[:1].upper() + n[1:] for n in shuffled]))
    true, pred = np.zeros((1, len(NAMES))), np.zeros((1, len(NAMES)))
    pred[0, JAW] = 1.0
    assert lve_mm(pred, true, templates) == pytest.approx(10.0)


def test_unit_scale(tmp_path: Path) -> None:
    templates = load_templates(rig(tmp_path, unit_mm=np.array(10.0)))  # a rig in centimetres
    true, pred = np.zeros((1, len(NAMES))), np.zeros((1, len(NAMES)))
    pred[0, JAW] = 1.0
    assert lve_mm(pred, true, templates) == pytest.approx(0.1)


def test_score_clips_adds_vertex_metrics(tmp_path: Path) -> None:
    templates = load_templates(rig(tmp_path))
    y = labels(10)
    scores = score_clips([y, y], [y, y], templates)
    assert scores["lve_mm"] == 0.0 and scores["eve_mm"] == 0.0


@pytest.mark.parametrize("changes, words", [
    ({"blendshapes": np.zeros((51, 4, 3))}, "blendshapes has shape (51, 4, 3)"),
    ({"blendshapes": np.zeros((52, 5, 3))}, "blendshapes has shape (52, 5, 3)"),
    ({"neutral": np.zeros((4, 2))}, "neutral has shape (4, 2)"),
    ({"lip_vertices": np.array([0, 4])}, "lip_vertices has indices outside 0..3"),
    ({"upper_vertices": np.array([0.5])}, "upper_vertices must be"),
    ({"names": np.array(["jawOpen"] * 52)}, "each of the 52"),
    ({"names": np.array(["nope"] * 52)}, "not an ARKit blendshape name"),
    ({"unit_mm": np.array(-1.0)}, "unit_mm must be one positive number"),
    ({"unit_mm": np.array([1.0, 2.0])}, "unit_mm must be one positive number"),
])
def test_mismatched_templates_are_user_errors(tmp_path: Path, changes: dict, words: str) -> None:
    with pytest.raises(UserError) as info:
        load_templates(rig(tmp_path, **changes))
    assert words in str(info.value)


def test_missing_template_arrays_and_files(tmp_path: Path) -> None:
    path = tmp_path / "partial.npz"
    np.savez(path, neutral=np.zeros((4, 3)))
    with pytest.raises(UserError, match="lack the arrays blendshapes, lip_vertices, upper_vertices"):
        load_templates(path)
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04" + bytes(50))
    for name in ("missing.npz", "single.npy", "broken.npz"):
        with pytest.raises(UserError, match="cannot read templates"):
            load_templates(tmp_path / name)


# -- baselines --

def test_mean_pose_baseline_predicts_the_train_mean_everywhere() -> None:
    train = [labels(10, 1), labels(30, 2)]
    baseline = baseline_mean_pose(train)
    out = baseline.predict(np.zeros(16000, dtype=np.float32), 7)
    assert out.shape == (7, len(NAMES))
    np.testing.assert_allclose(out, np.tile(np.concatenate(train).mean(axis=0), (7, 1)), atol=1e-6)


def test_frame_loudness() -> None:
    t = np.arange(16000) / 16000
    audio = 0.5 * np.sin(2 * np.pi * 300 * t)  # 300 Hz: whole periods in each 1/30 s window
    rms = frame_loudness(audio, 30, scale="linear")
    np.testing.assert_allclose(rms, 0.5 / np.sqrt(2), rtol=1e-3)
    np.testing.assert_allclose(frame_loudness(audio, 30), 20 * np.log10(0.5 / np.sqrt(2)), atol=0.01)
    assert frame_loudness(audio, 32, scale="linear")[-1] == 0.0  # past the end: silence
    assert frame_loudness(np.zeros(100), 1)[0] == -100.0


def _clips_with_jaw(law: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(3)
    audios, ys = [], []
    for _ in range(3):
        amplitude = np.repeat(rng.uniform(0.01, 0.9, 30), 16000 // 30 + 1)[:16000]
        audio = amplitude * np.sign(rng.standard_normal(16000))  # RMS per frame = amplitude
        y = labels(30, rng.integers(100))
        rms = frame_loudness(audio, 30, scale="linear")
        y[:, JAW] = 0.1 + 0.8 * rms if law == "linear" else 0.9 + 0.01 * 20 * np.log10(rms)
        audios.append(audio)
        ys.append(y)
    return audios, ys


@pytest.mark.parametrize("law, scale, coefficients", [("linear", "linear", (0.1, 0.8)), ("db", "db", (0.9, 0.01))])
def test_energy_baseline_fits_the_jaw_on_the_better_loudness_scale(law: str, scale: str,
                                                                   coefficients: tuple[float, float]) -> None:
    audios, ys = _clips_with_jaw(law)
    baseline = baseline_energy(audios, ys)
    assert baseline.loudness == scale
    np.testing.assert_allclose(baseline.jaw, coefficients, atol=0.02)
    out = baseline.predict(audios[0], 30)
    np.testing.assert_allclose(out[:, JAW], np.clip(ys[0][:, JAW], 0, 1), atol=0.02)
    others = [i for i in range(len(NAMES)) if i != JAW]
    np.testing.assert_allclose(out[:, others], np.tile(baseline.pose[others], (30, 1)), atol=1e-6)
