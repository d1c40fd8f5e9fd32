"""Recording a stream to a file: one row per frame of audio, nothing dropped.

`.csv` is the Live Link Face CSV layout (`training.livelink_csv`), written and flushed row by row
so a crash loses at most the frame being written; its 9 rotation columns hold the head and eye
angles as the Live Link Face packet does (`livelink.rotation_values`). `.npy` is (T, 52) float32
in EmoTalk order (the weights only), rows appended as they come and the row count written into the
header when the stream closes (so memory stays flat however long the show). The final neutral
frame is not part of the audio and not recorded.
"""
from __future__ import annotations

import io
import logging
import sys
from pathlib import Path
from typing import IO

import numpy as np

from ..training.blendshapes import COUNT
from ..training.errors import UserError
from ..training.livelink_csv import csv_header, csv_row
from .frames import OutFrame
from .livelink import rotation_values
from .sink import Sink

log = logging.getLogger(__name__)

SUFFIXES = (".csv", ".npy")


class Recorder(Sink):
    """Frames to `path` (.csv or .npy)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.suffix.lower() not in SUFFIXES:
            raise UserError(f"cannot record to {path}: the file must end in .csv (Live Link Face CSV) "
                            "or .npy (NumPy array)")
        if not path.parent.exists():  # a typo in a folder name must not quietly make a new tree
            raise UserError(f"cannot record to {path}: the folder {path.parent} does not exist; create it first "
                            f"or record somewhere else")
        # A file is not a slow network peer: its queue never drops.
        super().__init__(f"record {path}", queue_frames=sys.maxsize)
        self.path = path
        self._csv = path.suffix.lower() == ".csv"
        self._handle: IO | None = None
        self.recorded = 0

    def close(self, last: OutFrame | None = None, timeout: float | None = None) -> None:
        """Like `Sink.close`, but waits until every queued frame is written: a recording loses none."""
        super().close(last, timeout)

    def _open(self) -> None:
        try:
            self._handle = self.path.open("w", newline="") if self._csv else self.path.open("wb")
            self._handle.write(csv_header() if self._csv else _npy_header(0))
            self._handle.flush()
        except OSError as exc:
            raise UserError(f"cannot write {self.path} ({exc.strerror}): check the folder exists and is "
                            "writable") from None
        log.info("%s: recording", self.name)

    def _send(self, frame: OutFrame) -> None:
        if frame.final:
            return
        if self._csv:
            assert self._handle is not None, "open() the recorder first"
            self._handle.write(csv_row(frame.index, frame.weights, frame.fps, rotation_values(frame.motion)))
            self._handle.flush()
        else:
            assert self._handle is not None, "open() the recorder first"
            self._handle.write(np.asarray(frame.weights, dtype="<f4").tobytes())
        self.recorded += 1

    def _shutdown(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            with handle:
                if not self._csv:
                    handle.seek(0)
                    handle.write(_npy_header(self.recorded))
        except OSError as exc:
            log.error("%s: the recording is incomplete: %s", self.name, exc.strerror or exc)
            return
        log.info("%s: %d frames recorded", self.name, self.recorded)


def _npy_header(rows: int) -> bytes:
    """The .npy header of a (rows, 52) little-endian float32 array. Its length is padded to 64
    bytes and the same for 0 and for any count a recording can reach, so it is rewritten in place."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": (rows, COUNT)})
    return out.getvalue()
