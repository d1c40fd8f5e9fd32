"""The iFacialMocap UDP text protocol: encoding only, no sockets (the sink is `ifacialmocap_sink.py`).

iFacialMocap is an iPhone face tracker; VSeeFace, VMagicMirror, Warudo and VNyan take its stream as a
perfect-sync source on UDP 49983. One ASCII datagram per frame (ifacialmocap.com/for-developer;
the parsers of VMagicMirror's iFacialMocapReceiver and virtual-puppet-project read the same):

    eyeBlink_L-37|...|jawOpen-52|...|=head#RX,RY,RZ,PX,PY,PZ|rightEye#RX,RY,RZ|leftEye#RX,RY,RZ|

Each blendshape is `NAME-VALUE|`, VALUE an integer 0-100 (VMagicMirror parses it with int.TryParse:
no decimals); NAME is ARKit's raw spelling, a side as `_L`/`_R` (`eyeBlink_L`, `mouthSmile_R`)
while `jawLeft`, `mouthRight` (motions, not sides) keep theirs. A single `=` then opens the
transforms, each ending in `|`: the head's Euler angles in degrees and its position, then each
eye's Euler angles in degrees. The angles are ARKit's face-anchor rotations (X pitch, down > 0;
Y yaw, to the face's own left > 0; Z roll, to its own right > 0), the axes of `head_motion.py`, so
the stream's head and eye motion goes out as it is (`pose_of`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..training.blendshapes import NAMES
from .head_motion import REST, Motion

DEFAULT_PORT = 49983  # where VSeeFace, VMagicMirror, Warudo and VNyan listen for it
# ARKit names whose Left/Right is a direction of motion, not a side of the face.
_DIRECTIONS = frozenset({"jawLeft", "jawRight", "mouthLeft", "mouthRight"})


def ifm_name(name: str) -> str:
    """ARKit camelCase -> iFacialMocap's spelling: `eyeBlinkLeft` -> `eyeBlink_L`, `jawLeft` stays."""
    if name in _DIRECTIONS:
        return name
    for side, suffix in (("Left", "_L"), ("Right", "_R")):
        if name.endswith(side):
            return name[:-len(side)] + suffix
    return name


# The 52 names in EmoTalk order; receivers look them up by name, so the order is free.
IFM_NAMES: tuple[str, ...] = tuple(ifm_name(n) for n in NAMES)


@dataclass(frozen=True)
class Pose:
    """Head and eye transforms: Euler angles X, Y, Z in degrees, the head's position in the app's units.

    All zero: looking straight ahead.
    """

    head_rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    head_position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    right_eye: tuple[float, float, float] = (0.0, 0.0, 0.0)
    left_eye: tuple[float, float, float] = (0.0, 0.0, 0.0)


def pose_of(motion: Motion | None) -> Pose:
    """The transforms for the frame's head and eye `motion` (at rest where there is none); the head's
    position stays 0, as speech moves no head forward or back."""
    head = eyes = REST
    if motion is not None:
        head, eyes = motion.head or REST, motion.eyes or REST
    eye = (eyes.pitch, eyes.yaw, eyes.roll)
    return Pose(head_rotation=(head.pitch, head.yaw, head.roll), right_eye=eye, left_eye=eye)


def _numbers(values: tuple[float, ...]) -> str:
    return ",".join(f"{float(v):.4f}" for v in values)


def encode(weights: np.ndarray, pose: Pose = Pose()) -> bytes:
    """One datagram for (52,) EmoTalk-order `weights` in [0, 1] and the head and eye `pose`."""
    percent = np.rint(np.clip(np.asarray(weights, dtype=np.float64), 0.0, 1.0) * 100).astype(int)
    shapes = "".join(f"{name}-{value}|" for name, value in zip(IFM_NAMES, percent.tolist()))
    transforms = (f"=head#{_numbers(pose.head_rotation + pose.head_position)}|"
                  f"rightEye#{_numbers(pose.right_eye)}|leftEye#{_numbers(pose.left_eye)}|")
    return (shapes + transforms).encode("ascii")
