"""What the streamer hands to sinks: one output frame at the output rate, timed by the audio."""
from __future__ import annotations

import json
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
    `motion`: the head's and eyes' angles (`head_motion.py`), None where nothing computes them;
    sinks send the rest pose where a protocol needs one.
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


# The 52 weights as one JSON object, formatted in one step: a server sends about 1500 frames a
# second, and building a dict of 52 rounded floats for `json.dumps` cost most of its event loop.
_WEIGHTS_JSON = "{" + ",".join(f'"{name}":%.4f' for name in NAMES) + "}"


def frame_json(frame: OutFrame, kind: str | None = None) -> str:
    """A frame as the WebSocket JSON outputs send it (the streamer's `--ws`, `emotalk-serve` with
    `kind` "frame"): `frame`, `time` (s), `fps`, `weights` by name (4 decimals); with `motion`,
    also `head` {pitch, yaw, roll} and `eyes` {pitch, yaw} in degrees (0 where off); `emotion`
    and `final`."""
    text = '{"type":"%s",' % kind if kind else "{"
    text += '"frame":%d,"time":%.6f,"fps":%d,"weights":' % (frame.index, frame.time, frame.fps)
    text += _WEIGHTS_JSON % tuple(np.asarray(frame.weights, dtype=np.float64).tolist())
    if frame.motion is not None:
        head, eyes = frame.motion.head or REST, frame.motion.eyes or REST
        text += ',"head":{"pitch":%.3f,"yaw":%.3f,"roll":%.3f},"eyes":{"pitch":%.3f,"yaw":%.3f}' % (
            head.pitch, head.yaw, head.roll, eyes.pitch, eyes.yaw)
    return text + ',"emotion":%s,"final":%s}' % (json.dumps(frame.emotion), "true" if frame.final else "false")
