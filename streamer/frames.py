"""What the streamer hands to sinks: one output frame at the output rate, timed by the audio."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..training.blendshapes import COUNT, NAMES
from .head_motion import REST, Motion


@dataclass(frozen=True)
class OutFrame:
    """Frame `index` at `fps`, showing the audio at `time` = index / fps seconds of input.

    `weights`: (52,) float32 in [0, 1], EmoTalk order (`blendshapes.NAMES`); sinks map them by
    name. `final` marks the neutral frame every sink gets when the stream stops, one frame past
    the last frame of the audio. `emotion` is the voice's most likely emotion label, if known.
    `motion`: the head's and eyes' angles (`head_motion.py`), None where nothing computes them
    (`emotalk-serve`); sinks send the rest pose where a protocol needs one.
    """

    index: int
    time: float
    fps: int
    weights: np.ndarray
    final: bool = False
    emotion: str | None = None
    motion: Motion | None = None


def neutral_frame(index: int, fps: int, motion: Motion | None = None) -> OutFrame:
    """The rest pose (all weights 0; `motion` at rest too) that ends every stream, so no avatar
    freezes mid-expression."""
    return OutFrame(index, index / fps, fps, np.zeros(COUNT, dtype=np.float32), final=True, motion=motion)


def frame_fields(frame: OutFrame) -> dict:
    """A frame as the WebSocket JSON outputs send it (the streamer's `--ws`, `emotalk-serve`); with
    `motion`, also `head` {pitch, yaw, roll} and `eyes` {pitch, yaw} in degrees (0 where off)."""
    fields: dict = {
        "frame": frame.index,
        "time": round(frame.time, 6),
        "fps": frame.fps,
        "weights": {name: round(float(w), 4) for name, w in zip(NAMES, frame.weights)},
    }
    if frame.motion is not None:
        head, eyes = frame.motion.head or REST, frame.motion.eyes or REST
        fields["head"] = {"pitch": round(head.pitch, 3), "yaw": round(head.yaw, 3), "roll": round(head.roll, 3)}
        fields["eyes"] = {"pitch": round(eyes.pitch, 3), "yaw": round(eyes.yaw, 3)}
    return {**fields, "emotion": frame.emotion, "final": frame.final}
