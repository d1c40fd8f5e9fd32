"""Evaluation metrics and the baselines every model must beat (pure numpy).

Blendshape-space metrics work on (T, 52) EmoTalk-order weights; regions come from `blendshapes`
(`LIP` = jaw + mouth channels, `UPPER` = brows, eyes, cheeks, nose). Vertex metrics (LVE, EVE)
need a face rig: see `load_templates`. Clips are pooled frame by frame, so a long clip weighs more
than a short one; temporal metrics (jitter) never difference across a clip boundary.
"""
from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .blendshapes import COUNT, INDEX, LIP, UPPER, camel
from .errors import UserError

JAW_OPEN = INDEX["jawOpen"]
SILENCE_DB = -100.0  # loudness floor: log of a zero RMS


def _pair(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 2 or pred.shape[1] != COUNT:
        raise ValueError(f"prediction {pred.shape} and labels {true.shape} must both be (frames, {COUNT})")
    return pred, true


def lip_mae(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute error over the lip (jaw + mouth) channels and all frames."""
    pred, true = _pair(pred, true)
    return float(np.abs(pred[:, LIP] - true[:, LIP]).mean())


def lip_max_error(pred: np.ndarray, true: np.ndarray) -> float:
    """Per frame the worst lip channel's absolute error, averaged over frames (LVE in weight space)."""
    pred, true = _pair(pred, true)
    return float(np.abs(pred[:, LIP] - true[:, LIP]).max(axis=1).mean())


def upper_mae(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute error over the upper-face channels, where emotion shows."""
    pred, true = _pair(pred, true)
    return float(np.abs(pred[:, UPPER] - true[:, UPPER]).mean())


def jaw_open_corr(pred: np.ndarray, true: np.ndarray) -> float:
    """Pearson correlation of jawOpen over all frames; 0 where either side is constant.

    A constant prediction (the mean-pose baseline) follows none of the speech, hence 0 rather
    than an undefined value.
    """
    pred, true = _pair(pred, true)
    x, y = pred[:, JAW_OPEN] - pred[:, JAW_OPEN].mean(), true[:, JAW_OPEN] - true[:, JAW_OPEN].mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 1e-12 else 0.0


def _jitter_terms(pred: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(np.asarray(pred, dtype=np.float64), n=2, axis=0))


def jitter(pred: np.ndarray) -> float:
    """Mean absolute second difference over time, averaged over channels: frame-to-frame shake.

    It needs no labels: a smooth prediction scores low whatever its accuracy. 0 below 3 frames.
    """
    terms = _jitter_terms(pred)
    return float(terms.mean()) if terms.size else 0.0


def pooled_jitter(clips: Sequence[np.ndarray]) -> float:
    """Jitter over several clips, never across a clip boundary."""
    shakes = [_jitter_terms(c) for c in clips]
    terms = sum(s.size for s in shakes)
    return float(sum(s.sum() for s in shakes) / terms) if terms else 0.0


def emotion_accuracy(predicted: Sequence[int], actual: Sequence[int]) -> float | None:
    """Share of clips whose predicted emotion index equals the labelled one; None with no clips."""
    if len(predicted) != len(actual):
        raise ValueError(f"{len(predicted)} predictions for {len(actual)} labels")
    if not actual:
        return None
    return float(np.mean(np.asarray(predicted) == np.asarray(actual)))


# -- vertex metrics ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FaceTemplates:
    """A blendshape rig for vertex metrics: mesh(w) = neutral + sum_i w_i * offsets_i.

    `offsets` are (52, V, 3) in EmoTalk order, already relative to the neutral mesh.
    """

    neutral: np.ndarray
    offsets: np.ndarray
    lip_vertices: np.ndarray
    upper_vertices: np.ndarray
    unit_mm: float = 1000.0

    def displacement(self, weights: np.ndarray, vertices: np.ndarray) -> np.ndarray:
        """(T, 52) weights -> (T, len(vertices), 3) offsets from the neutral mesh, in mm."""
        return np.einsum("tk,kvc->tvc", weights, self.offsets[:, vertices]) * self.unit_mm


def load_templates(path: str | Path) -> FaceTemplates:
    """Read a rig from an .npz file.

    Keys: `neutral` (V, 3); `blendshapes` (52, V, 3) ABSOLUTE meshes, each the face with one
    blendshape at full weight (what a rig's shape keys export; the offsets are `blendshapes -
    neutral`, the paper's transform mesh = neutral + sum_i w_i (bs_i - neutral)); optional `names`
    (52,) naming the blendshapes in the file's order (ARKit camelCase or PascalCase; default: EmoTalk
    order); `lip_vertices` and `upper_vertices` (vertex indices of the lips and of the eye +
    forehead region, as EmoTalk's EVE uses FLAME's eye/forehead masks); optional `unit_mm` (mesh
    units to mm, default 1000 for metres).
    """
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("it holds one array, not an .npz archive of named arrays")
        with data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read templates {path} ({exc}): give an .npz file (see load_templates)") from exc
    missing = [k for k in ("neutral", "blendshapes", "lip_vertices", "upper_vertices") if k not in arrays]
    if missing:
        raise UserError(f"templates {path} lack the arrays {', '.join(missing)}; "
                        "save them with numpy.savez (see emotalk-eval --help)")
    neutral = arrays["neutral"].astype(np.float64)
    shapes = arrays["blendshapes"].astype(np.float64)
    if neutral.ndim != 2 or neutral.shape[1] != 3:
        raise UserError(f"templates {path}: neutral has shape {neutral.shape}, expected (vertices, 3)")
    if shapes.shape != (COUNT, *neutral.shape):
        raise UserError(f"templates {path}: blendshapes has shape {shapes.shape}, expected "
                        f"({COUNT}, {neutral.shape[0]}, 3) to match neutral {neutral.shape}")
    if not (np.isfinite(neutral).all() and np.isfinite(shapes).all()):
        raise UserError(f"templates {path}: the meshes contain NaN or inf; export them again")
    if "names" in arrays:
        try:
            order = [INDEX[camel(str(n))] for n in arrays["names"]]
        except KeyError as exc:
            raise UserError(f"templates {path}: {exc.args[0]}; names must be the 52 ARKit names") from exc
        if sorted(order) != list(range(COUNT)):
            raise UserError(f"templates {path}: names must list each of the 52 ARKit blendshapes once")
        shapes = shapes[np.argsort(order)]
    regions = {}
    for key in ("lip_vertices", "upper_vertices"):
        index = arrays[key]
        if index.ndim != 1 or index.size == 0 or not np.issubdtype(index.dtype, np.integer):
            raise UserError(f"templates {path}: {key} must be a non-empty 1-D array of vertex indices")
        if index.min() < 0 or index.max() >= neutral.shape[0]:
            raise UserError(f"templates {path}: {key} has indices outside 0..{neutral.shape[0] - 1}")
        regions[key] = index.astype(np.int64)
    unit_mm = np.asarray(arrays.get("unit_mm", 1000.0))
    if unit_mm.size != 1 or not np.issubdtype(unit_mm.dtype, np.number) or not unit_mm.item() > 0:
        raise UserError(f"templates {path}: unit_mm must be one positive number (mm per mesh unit)")
    unit = float(unit_mm.item())
    return FaceTemplates(neutral, shapes - neutral[None], regions["lip_vertices"],
                         regions["upper_vertices"], unit)


def frame_vertex_errors(pred: np.ndarray, true: np.ndarray, templates: FaceTemplates,
                        vertices: np.ndarray, squared: bool = False) -> np.ndarray:
    """Per frame, the largest distance in mm between predicted and true positions of `vertices`.

    The neutral mesh cancels, so only the weight difference is rendered through the offsets.
    `squared=True` gives FaceFormer/CodeTalker's squared distance (mm^2) instead.
    """
    pred, true = _pair(pred, true)
    distance = np.square(templates.displacement(pred - true, vertices)).sum(axis=-1)
    worst = distance.max(axis=1)
    return worst if squared else np.sqrt(worst)


def lve_mm(pred: np.ndarray, true: np.ndarray, templates: FaceTemplates, squared: bool = False) -> float:
    """Lip vertex error: per frame the largest lip-vertex L2 distance, averaged over frames, in mm.

    The EmoTalk paper defines LVE as "the maximal l2 error of all lip vertices for each frame,
    averaged over all frames" and reports it in mm, so this is the plain Euclidean distance. The
    FaceFormer/CodeTalker evaluation code (and TorchMetrics' LipVertexError) takes the maximal
    *squared* distance, whose unit is mm^2: its numbers are not comparable with mm and it weighs
    large misses quadratically. `squared=True` reproduces that convention for comparisons.
    """
    return float(frame_vertex_errors(pred, true, templates, templates.lip_vertices, squared).mean())


def eve_mm(pred: np.ndarray, true: np.ndarray, templates: FaceTemplates, squared: bool = False) -> float:
    """Emotional vertex error (EmoTalk): LVE's measure over the eye and forehead vertices, in mm."""
    return float(frame_vertex_errors(pred, true, templates, templates.upper_vertices, squared).mean())


def score_clips(preds: Sequence[np.ndarray], trues: Sequence[np.ndarray],
                templates: FaceTemplates | None = None) -> dict[str, float | int]:
    """All blendshape metrics (and lve_mm/eve_mm with templates) pooled over clips."""
    if len(preds) != len(trues) or not preds:
        raise ValueError(f"need the same non-zero number of predictions ({len(preds)}) and labels ({len(trues)})")
    pred, true = _pair(np.concatenate(preds), np.concatenate(trues))
    scores: dict[str, float | int] = {
        "lip_mae": lip_mae(pred, true),
        "lip_max_error": lip_max_error(pred, true),
        "upper_mae": upper_mae(pred, true),
        "jaw_open_corr": jaw_open_corr(pred, true),
        "jitter": pooled_jitter(preds),
        "frames": int(pred.shape[0]),
    }
    if templates is not None:
        for key, vertices in (("lve_mm", templates.lip_vertices), ("eve_mm", templates.upper_vertices)):
            worst = np.concatenate([frame_vertex_errors(p, t, templates, vertices) for p, t in zip(preds, trues)])
            scores[key] = float(worst.mean())
    return scores


# -- baselines -----------------------------------------------------------------------------------

def frame_loudness(audio: np.ndarray, frames: int, sample_rate: int = 16000, fps: int = 30,
                   scale: str = "db") -> np.ndarray:
    """RMS of the audio in each frame's window [k/fps, (k+1)/fps), linear or in dB (floor -100).

    Frames past the end of the audio are silent.
    """
    audio = np.asarray(audio, dtype=np.float64)
    edges = np.round(np.arange(frames + 1) * sample_rate / fps).astype(np.int64)
    squares = np.concatenate([[0.0], np.cumsum(audio * audio)])
    ends = np.minimum(edges, audio.size)
    lengths = edges[1:] - edges[:-1]
    rms = np.sqrt(np.maximum(squares[ends[1:]] - squares[ends[:-1]], 0.0) / np.maximum(lengths, 1))
    if scale == "linear":
        return rms
    if scale == "db":
        return np.maximum(20.0 * np.log10(np.maximum(rms, 1e-300)), SILENCE_DB)
    raise ValueError(f"unknown loudness scale {scale!r}")


@dataclass(frozen=True)
class Baseline:
    """A face that ignores what is said: the mean pose, optionally with jawOpen following loudness."""

    name: str
    pose: np.ndarray  # (52,) mean of the train labels
    jaw: tuple[float, float] | None = None  # (a, b): jawOpen = a + b * loudness
    loudness: str | None = None  # "db" or "linear", the scale `jaw` was fitted on
    sample_rate: int = 16000
    fps: int = 30

    def predict(self, audio: np.ndarray, frames: int) -> np.ndarray:
        """(frames, 52) weights in [0, 1] for one clip."""
        out = np.tile(self.pose, (frames, 1))
        if self.jaw is not None:
            a, b = self.jaw
            loud = frame_loudness(audio, frames, self.sample_rate, self.fps, self.loudness)
            out[:, JAW_OPEN] = a + b * loud
        return np.clip(out, 0.0, 1.0).astype(np.float32)


def baseline_mean_pose(train_labels: Sequence[np.ndarray]) -> Baseline:
    """Every frame the per-channel mean of the train split's labels."""
    if not train_labels:
        raise ValueError("the mean-pose baseline needs train labels")
    pose = np.concatenate([np.asarray(y, dtype=np.float64) for y in train_labels]).mean(axis=0)
    return Baseline("mean_pose", pose)


def baseline_energy(train_audio: Sequence[np.ndarray], train_labels: Sequence[np.ndarray],
                    sample_rate: int = 16000, fps: int = 30) -> Baseline:
    """The mean pose with jawOpen = a + b * loudness, (a, b) fitted by least squares on the train split.

    Loudness is the RMS of each frame's audio. Both a linear and a dB scale are fitted and the one
    with the smaller train residual (the better correlated) is kept: which scale follows the jaw
    better depends on the voices and the recording level, so the data decides.
    """
    mean = baseline_mean_pose(train_labels)
    jaw = np.concatenate([np.asarray(y, dtype=np.float64)[:, JAW_OPEN] for y in train_labels])
    best = None
    for scale in ("db", "linear"):
        loud = np.concatenate([frame_loudness(a, len(y), sample_rate, fps, scale)
                               for a, y in zip(train_audio, train_labels)])
        design = np.stack([np.ones_like(loud), loud], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, jaw, rcond=None)
        residual = float(np.square(design @ (a, b) - jaw).sum())
        if best is None or residual < best[0]:
            best = (residual, scale, (float(a), float(b)))
    _, scale, coefficients = best
    return Baseline("energy", mean.pose, coefficients, scale, sample_rate, fps)
