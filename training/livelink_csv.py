"""Live Link Face CSV recordings: the file the iPhone app saves and people train on.

Layout (as the Live Link Face app records it; e.g. anim/S07-001.csv in
github.com/alexdjulin/LiveLinkFace-CSV-Retarget-For-Motionbuilder): `Timecode,BlendShapeCount,` then 61 PascalCase
columns in the app's CSV order, in which Jaw and Mouth Left/Right are swapped relative to the UDP
packet. Columns are always mapped by name through `blendshapes`. The timecode is
`HH:MM:SS:FF.fff`: FF is the frame within the second at the timecode rate (60 in real recordings,
which may capture every second timecode frame) and `.fff` is read as a sub-frame fraction.
"""
from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, read_audio
from .blendshapes import COUNT, LIVELINK_CSV_ORDER, NAMES, camel, pascal, to_named_order
from .errors import UserError

FPS = 30
TIMECODE_RATES = (24, 25, 30, 48, 50, 60, 120)
LIVELINK_RATES = (30, 60)  # what the app records at; the guess for takes shorter than a second
_TIMECODE = re.compile(r"^\s*(\d+):(\d{2}):(\d{2})[:;](\d+(?:\.\d*)?)\s*$")
# Wav and CSV are recorded together; a larger disagreement means the wrong pair of files.
MAX_LENGTH_MISMATCH_S = 1.0


def format_timecode(frame: int, fps: int = FPS) -> str:
    """0-based frame index -> `HH:MM:SS:FF.000` at `fps`."""
    seconds, ff = divmod(frame, fps)
    minutes, ss = divmod(seconds, 60)
    hh, mm = divmod(minutes, 60)
    return f"{hh:02d}:{mm:02d}:{ss:02d}:{ff:02d}.000"


def csv_header() -> str:
    """The header line of a Live Link Face CSV (no cell needs quoting)."""
    return ",".join(["Timecode", "BlendShapeCount", *LIVELINK_CSV_ORDER]) + "\n"


def csv_row(index: int, weights: np.ndarray, fps: int = FPS, rotations: Sequence[float] = ()) -> str:
    """The line for frame `index` from (52,) EmoTalk-order weights and the 9 head and eye `rotations`
    (`blendshapes.ROTATIONS` order, 0 without); shared by files and live recordings."""
    columns = to_named_order(np.asarray(weights, dtype=np.float64), LIVELINK_CSV_ORDER, rotations)
    cells = [format_timecode(index, fps), str(len(LIVELINK_CSV_ORDER)), *(f"{v:.10f}" for v in columns)]
    return ",".join(cells) + "\n"


def write_csv(path: str | Path, weights: np.ndarray, fps: int = FPS) -> None:
    """Write (T, 52) EmoTalk-order weights as a Live Link Face CSV (rotations 0) from 00:00:00:00."""
    path = Path(path)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != COUNT:
        raise ValueError(f"weights must be (frames, {COUNT}), got {weights.shape}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            handle.write(csv_header())
            for i, row in enumerate(weights):
                handle.write(csv_row(i, row, fps))
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc}): check the folder exists and is writable") from exc


def _parse_timecode(text: str) -> tuple[int, float]:
    """`HH:MM:SS:FF.fff` -> (whole seconds, frame position FF.fff); ValueError if malformed."""
    match = _TIMECODE.match(text)
    if match is None:
        raise ValueError(text)
    hh, mm, ss, frame = match.groups()
    return (int(hh) * 60 + int(mm)) * 60 + int(ss), float(frame)


def detect_timecode_rate(seconds: np.ndarray, frames: np.ndarray) -> int:
    """The timecode rate of a take, from its FF field.

    Where the seconds roll over, `last FF + step - next FF` measures the rate; the answer is the
    common rate above the largest FF nearest to it. A take shorter than a second never rolls over
    and is read as the lowest Live Link Face rate above its largest FF: pass `source_fps` there.
    """
    highest = float(frames.max())
    fallback = math.floor(highest) + 1
    same_second = np.diff(seconds) == 0
    rollover = np.flatnonzero(np.diff(seconds) == 1)
    if rollover.size == 0 or not same_second.any():
        return next((r for r in LIVELINK_RATES if r > highest), fallback)
    step = float(np.median(np.diff(frames)[same_second]))
    measured = float(np.median(frames[rollover] + step - frames[rollover + 1]))
    candidates = [r for r in TIMECODE_RATES if r > highest] or [fallback]
    return min(candidates, key=lambda r: abs(r - measured))


def _columns(path: Path, header: list[str]) -> tuple[int, list[int]]:
    """Timecode column index and the column of each EmoTalk blendshape, by name (extras ignored)."""
    lower = [name.strip().lower() for name in header]
    if "timecode" not in lower:
        raise UserError(f"{path} has no Timecode column: is it a Live Link Face CSV recording?")
    position: dict[str, int] = {}
    for j, name in enumerate(header):
        try:
            position.setdefault(camel(name), j)
        except KeyError:
            continue
    missing = [pascal(n) for n in NAMES if n not in position]
    if missing:
        raise UserError(f"{path} lacks the blendshape columns {', '.join(missing)}: "
                        "export the recording again with all blendshapes")
    return lower.index("timecode"), [position[n] for n in NAMES]


def read_csv(path: str | Path, fps: int = FPS, source_fps: float | None = None) -> np.ndarray:
    """A Live Link Face CSV -> (T, 52) float32 EmoTalk-order weights at `fps`, clipped to [0, 1].

    Frames are placed at their timecode times and linearly interpolated onto a grid starting at the
    first row, so a 60 fps (or irregular) recording comes out at 30 fps. The timecode rate is
    detected from the FF field unless `source_fps` is given.
    """
    if source_fps is not None and source_fps <= 0:
        raise ValueError(f"source_fps must be positive, got {source_fps}")
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read Live Link Face CSV {path} ({exc}): check the path") from exc
    if not rows:
        raise UserError(f"{path} is empty: export the Live Link Face recording again")
    time_col, columns = _columns(path, rows[0][1])
    body = rows[1:]
    if not body:
        raise UserError(f"{path} has a header but no frames: export the recording again")
    lines = [line for line, _ in body]
    seconds = np.empty(len(body), dtype=np.int64)
    frames = np.empty(len(body))
    values = np.empty((len(body), COUNT))
    for i, (line, row) in enumerate(body):
        cell = row[time_col] if time_col < len(row) else ""
        try:
            seconds[i], frames[i] = _parse_timecode(cell)
        except ValueError:
            raise UserError(f"{path} line {line}: bad timecode {cell!r}, expected HH:MM:SS:FF.fff; "
                            "fix or delete that row") from None
        try:
            values[i] = [float(row[j]) for j in columns]
        except (ValueError, IndexError):
            raise UserError(f"{path} line {line}: a blendshape value is missing or not a number; "
                            "fix or delete that row") from None
    if not np.isfinite(values).all():
        bad = lines[int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])]
        raise UserError(f"{path} line {bad}: a blendshape value is NaN or infinite; fix or delete that row")
    rate = source_fps if source_fps is not None else detect_timecode_rate(seconds, frames)
    if np.any(frames >= rate):
        first = int(np.flatnonzero(frames >= rate)[0])
        raise UserError(f"{path} line {lines[first]}: frame field {frames[first]:g} does not fit a {rate:g} fps "
                        "timecode; pass the recording's timecode rate as source_fps")
    times = seconds - seconds[0] + frames / rate
    # A take that runs past midnight restarts the timecode at 00:00:00.
    times = times + 86400.0 * np.cumsum(np.concatenate([[0], np.diff(times) < -43200]))
    backwards = np.flatnonzero(np.diff(times) < 0)
    if backwards.size:
        first = int(backwards[0]) + 1
        raise UserError(f"{path} line {lines[first]}: timecode {body[first][1][time_col]!r} goes back in time; "
                        "the file mixes takes: split or re-export it")
    times -= times[0]
    grid = np.arange(int(math.floor(times[-1] * fps + 1e-6)) + 1) / fps
    out = np.stack([np.interp(grid, times, values[:, k]) for k in range(COUNT)], axis=-1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def load_livelink_recording(csv_path: str | Path, wav_path: str | Path | None = None,
                            fps: int = FPS, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """A Live Link Face take -> (audio (N,), weights (T, 52)) with T = ceil(N / rate * fps).

    The wav defaults to the CSV's stem with `.wav`. Both start when the take starts; the longer one
    is cut to the shorter so that audio and labels stay aligned.
    """
    csv_path = Path(csv_path)
    wav_path = csv_path.with_suffix(".wav") if wav_path is None else Path(wav_path)
    if not wav_path.exists():
        raise UserError(f"no audio for {csv_path}: expected {wav_path}; extract the take's audio "
                        "(ffmpeg -i TAKE.mov -ac 1 -ar 16000 TAKE.wav) or pass the wav path")
    audio = read_audio(wav_path, sample_rate)
    weights = read_csv(csv_path, fps)
    audio_s, csv_s = len(audio) / sample_rate, len(weights) / fps
    if abs(audio_s - csv_s) > MAX_LENGTH_MISMATCH_S:
        raise UserError(f"{csv_path} covers {csv_s:.2f} s but {wav_path} lasts {audio_s:.2f} s: "
                        "they are not the same take; pass the matching wav")
    if audio_s > csv_s:
        audio = audio[:round(csv_s * sample_rate)]
    weights = weights[:math.ceil(len(audio) / sample_rate * fps)]
    return audio, weights
