"""Data folders: the synthetic corpus, 3D-ETF-style folders, and cross-reconstruction pairs.

A folder holds clips as `NAME.wav` (any rate, read as 16 kHz mono) + labels: `NAME.npy` ((T, 52)
at 30 fps, EmoTalk order), or `NAME.csv`, a Live Link Face recording (columns by name, resampled
to 30 fps). With `metadata.csv` (our corpus) each clip has its content id, emotion, level, person
and split; without it, RAVDESS-style names (`03-01-06-02-01-01-12`: emotion, intensity, statement,
actor, as 3D-ETF's RAVDESS part uses) are parsed, and other clips get a split from a hash of their
content.
"""
from __future__ import annotations

import csv
import json
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .blendshapes import COUNT
from .config import RAVDESS_EMOTIONS
from .errors import UserError
from .livelink_csv import read_csv

SPLITS = ("train", "val", "test", "xvoice")  # xvoice: held-out voices (emotalk-corpus --voices flite, festival, kokoro)
METADATA = "metadata.csv"


@dataclass(frozen=True)
class ClipInfo:
    clip: str
    wav: Path
    labels: Path  # NAME.npy, or NAME.csv from Live Link Face
    content: str
    emotion: str | None
    level: int
    person: int
    split: str
    align: Path | None = None
    voice: str | None = None  # the corpus's voice (metadata's `voice`); None where it does not say


def read_labels(path: Path) -> np.ndarray:
    """(T, 52) float32 labels at 30 fps; a missing, unreadable or wrongly shaped file is a UserError."""
    if path.suffix.lower() == ".csv":
        return read_csv(path)
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"broken label file {path}: {exc}; regenerate it or remove the clip") from exc
    if labels.ndim != 2 or labels.shape[1] != COUNT:
        raise UserError(f"label file {path} has shape {labels.shape}, expected (frames, {COUNT}); "
                        "regenerate it or remove the clip")
    if not np.isfinite(labels).all():
        raise UserError(f"label file {path} contains NaN or inf; regenerate it or remove the clip")
    return labels.astype(np.float32)


def read_alignment(path: Path) -> list[tuple[float, float, str]]:
    """Phoneme events [(start_s, end_s, phoneme)] written by the corpus generator."""
    try:
        return [(float(s), float(e), str(p)) for s, e, p in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"broken alignment file {path}: {exc}; regenerate the corpus") from exc


def _split_for(content: str) -> str:
    """A stable 80/10/10 split by content for folders that do not name one."""
    bucket = zlib.crc32(content.encode()) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def _from_metadata(root: Path) -> list[ClipInfo]:
    clips = []
    path = root / METADATA
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        required = {"clip", "content", "emotion", "level", "person", "split"}
        missing = required - set(reader.fieldnames or ())
        if missing:
            raise UserError(f"{path} lacks the columns {sorted(missing)}; regenerate the corpus")
        for line, row in enumerate(reader, start=2):
            try:
                name = row["clip"]
                split = row["split"]
                if split not in SPLITS:
                    raise ValueError(f"split {split!r} is not one of {SPLITS}")
                align = root / "clips" / f"{name}.align.json"
                clips.append(ClipInfo(
                    clip=name, wav=root / "clips" / f"{name}.wav", labels=root / "clips" / f"{name}.npy",
                    content=row["content"], emotion=row["emotion"] or None, level=int(row["level"]),
                    person=int(row["person"]), split=split, align=align if align.exists() else None,
                    voice=row.get("voice") or None,
                ))
            except (ValueError, TypeError, KeyError) as exc:
                raise UserError(f"{path} line {line} is malformed ({exc}); regenerate the corpus") from exc
    return clips


def _parse_ravdess(stem: str) -> tuple[str, str, int, int] | None:
    """RAVDESS `MM-VC-EE-II-SS-RR-AA` -> (emotion, statement, level, person) or None."""
    parts = stem.split("-")
    if len(parts) != 7 or not all(p.isdigit() for p in parts):
        return None
    emotion, intensity, statement, actor = int(parts[2]), int(parts[3]), parts[4], int(parts[6])
    if not (1 <= emotion <= 8 and intensity in (1, 2) and 1 <= actor <= 24):
        return None
    return RAVDESS_EMOTIONS[emotion - 1], statement, intensity - 1, actor - 1


def _from_pairs_of_files(root: Path) -> list[ClipInfo]:
    clips = []
    for wav in sorted(root.rglob("*.wav")):
        labels = next((p for p in (wav.with_suffix(".npy"), wav.with_suffix(".csv")) if p.exists()), None)
        if labels is None:
            continue
        parsed = _parse_ravdess(wav.stem)
        if parsed:
            emotion, statement, level, person = parsed
            content = f"ravdess-{statement}"
        else:
            emotion, level, person, content = None, 1, 0, wav.stem
        clips.append(ClipInfo(clip=wav.stem, wav=wav, labels=labels, content=content, emotion=emotion,
                              level=level, person=person, split=_split_for(content)))
    return clips


def load_folder(root: Path) -> list[ClipInfo]:
    """Every clip of a data folder; checks that each clip's files exist."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist; make one with emotalk-corpus --out {root}")
    clips = _from_metadata(root) if (root / METADATA).exists() else _from_pairs_of_files(root)
    if not clips:
        raise UserError(f"no clips in {root}: expected {METADATA}, or NAME.wav with NAME.npy or a "
                        "Live Link Face NAME.csv")
    for clip in clips:
        for path in (clip.wav, clip.labels):
            if not path.exists():
                raise UserError(f"data folder {root} is missing {path.relative_to(root)}; "
                                "regenerate the corpus or remove the clip from metadata.csv")
    return clips


def by_split(clips: list[ClipInfo], split: str) -> list[ClipInfo]:
    chosen = [c for c in clips if c.split == split]
    if not chosen:
        raise UserError(f"no clips in split {split!r}; the folder has splits "
                        f"{sorted({c.split for c in clips})}")
    return chosen


def pair_groups(clips: list[ClipInfo]) -> list[list[int]]:
    """Indices of clips with the same content and person and at least two different emotions."""
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        if clip.emotion is not None:
            groups[(clip.content, clip.person)].append(i)
    return [g for g in groups.values() if len({clips[i].emotion for i in g}) >= 2]


def time_warp(source: list[tuple[float, float, str]] | None, target: list[tuple[float, float, str]] | None,
              source_seconds: float, target_seconds: float, times: np.ndarray) -> np.ndarray:
    """Map times in the source clip to the same spoken position in the target clip.

    Same sentence, same voice: the phoneme sequences match, so phoneme boundaries are anchors of a
    piecewise-linear map. Without alignments (or if the sequences differ) the map is linear.
    """
    anchors_s, anchors_t = [0.0, source_seconds], [0.0, target_seconds]
    if source and target and [p for _, _, p in source] == [p for _, _, p in target]:
        anchors_s = [0.0] + [s for s, _, _ in source] + [source[-1][1], source_seconds]
        anchors_t = [0.0] + [s for s, _, _ in target] + [target[-1][1], target_seconds]
    xs, ys = np.maximum.accumulate(np.asarray(anchors_s)), np.maximum.accumulate(np.asarray(anchors_t))
    return np.interp(times, xs, ys)


def frame_warp(source: list[tuple[float, float, str]] | None, target: list[tuple[float, float, str]] | None,
               source_seconds: float, target_seconds: float, frames: int, fps: int) -> np.ndarray:
    """For each of the source clip's frames, the fractional target frame at the same spoken position."""
    return time_warp(source, target, source_seconds, target_seconds, np.arange(frames) / fps) * fps
