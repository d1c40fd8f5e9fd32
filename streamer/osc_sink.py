"""OSC out over UDP: VMC perfect sync for avatar apps, or one plain ARKit message per frame.

fmt "vmc" (VSeeFace, VMagicMirror, Warudo, VNyan; the VMC protocol, protocol.vmc.info): one
bundle per frame with an immediate time tag, holding
    /VMC/Ext/Blend/Val  s NAME  f VALUE    the 52 perfect-sync PascalCase names (EyeBlinkLeft ...),
                                           then the VRM 0.x presets A I U E O Blink_L Blink_R Joy
                                           Angry Sorrow Fun (`shapes`: both, or one of the two)
    /VMC/Ext/Bone/Pos  s "Head"  f*7       the head's local position (0, 0, 0) and rotation
                                           (quaternion x y z w), while head motion is on
    /VMC/Ext/Set/Eye  i 1  f X Y Z         the eyes' look-at point, relative to the head, 1 m ahead,
                                           while eye motion is on
    /VMC/Ext/Blend/Apply                   no arguments, last
or, not `bundled`, the same messages each in a datagram of its own, for receivers that cannot read
bundles. The head and the eyes are in Unity's axes, which VMC uses: left-handed, x to the avatar's
right, y up, z ahead of a humanoid facing +z, so `head_motion.py`'s angles (ARKit's axes, x to the
face's left) become Quaternion.Euler(pitch, -yaw, -roll) and a look-at point with x < 0 for yaw > 0.
fmt "arkit": one message per frame
    /emotalk/arkit  i FRAME_INDEX  f AUDIO_TIME_S  f*52 WEIGHTS
with the weights in EmoTalk order (`blendshapes.NAMES`, alphabetical camelCase: browDownLeft ...
tongueOut), FRAME_INDEX at the output rate and AUDIO_TIME_S the seconds of input audio shown.

python-osc builds each datagram once as a template; per frame only the value slots are rewritten
(a full build costs about 0.5 ms, and this runs 30-60 times a second).
"""
from __future__ import annotations

import math
import struct

import numpy as np
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from ..training.blendshapes import COUNT, VMC_NAMES, VRM0_FROM_ARKIT, vrm_presets
from ..training.errors import UserError
from .frames import OutFrame
from .head_motion import Motion, Rotation
from .udp import UdpSink

FORMATS = ("vmc", "arkit")
SHAPES = ("both", "perfectsync", "presets")  # what a VMC frame carries
DEFAULT_SHAPES = "both"  # works with any avatar: a receiver ignores the names its avatar lacks
VMC_VAL = "/VMC/Ext/Blend/Val"
VMC_APPLY = "/VMC/Ext/Blend/Apply"
VMC_BONE = "/VMC/Ext/Bone/Pos"
VMC_EYE = "/VMC/Ext/Set/Eye"
EYE_TARGET_M = 1.0  # how far ahead of the head the eyes' look-at point lies (about a camera's distance)
ARKIT_ADDRESS = "/emotalk/arkit"
VRM_PRESETS: tuple[str, ...] = tuple(VRM0_FROM_ARKIT)
_BUNDLE_HEADER_BYTES = 16  # "#bundle\0" and the 8-byte time tag
_ARKIT_ARGS = struct.Struct(f">if{COUNT}f")
_BONE_ARGS = struct.Struct(">7f")  # position x y z, rotation x y z w
_EYE_ARGS = struct.Struct(">i3f")  # enable, look-at point x y z


def _message(address: str, *args: tuple[object, str]) -> OscMessageBuilder:
    builder = OscMessageBuilder(address)
    for value, kind in args:
        builder.add_arg(value, kind)
    return builder


class OscSink(UdpSink):
    """Blendshapes as OSC to `host`:`port` in format `fmt`; for "vmc", which `shapes` and whether
    `bundled` (see the module docstring)."""

    def __init__(self, host: str, port: int, fmt: str = "vmc", shapes: str = DEFAULT_SHAPES, bundled: bool = True):
        if fmt not in FORMATS:
            raise UserError(f"unknown OSC format {fmt!r}: use {' or '.join(FORMATS)}")
        if shapes not in SHAPES:
            raise UserError(f"unknown VMC shapes {shapes!r}: use {', '.join(SHAPES)}")
        super().__init__(f"osc {host}:{port}", host, port, "--osc")
        self.fmt, self.shapes, self.bundled = fmt, shapes, bundled
        self._perfect_sync, self._presets = shapes != "presets", shapes != "perfectsync"
        names = (VMC_NAMES if self._perfect_sync else ()) + (VRM_PRESETS if self._presets else ())
        if fmt == "arkit":
            arkit = _message(ARKIT_ADDRESS, (0, "i"), (0.0, "f"), *[(0.0, "f")] * COUNT).build()
            self._prefix = arkit.dgram[:-_ARKIT_ARGS.size]
            return
        self._apply = OscMessageBuilder(VMC_APPLY).build().dgram
        if bundled:
            self._template, self._slots = _vmc_template(names)
            self._apply_at = len(self._template) - 4 - len(self._apply)  # where the Apply element starts
        else:
            # Each message's value is its last 4 bytes: keep what comes before it.
            self._prefixes = [_message(VMC_VAL, (name, "s"), (0.0, "f")).build().dgram[:-4] for name in names]

    def datagrams(self, frame: OutFrame) -> list[bytes]:
        if self.fmt == "arkit":
            return [self._prefix + _ARKIT_ARGS.pack(frame.index, frame.time, *frame.weights.tolist())]
        values = self._vmc_values(frame.weights)
        motion = vmc_motion(frame.motion)
        if not self.bundled:
            floats = values.tobytes()
            return [prefix + floats[4 * i:4 * i + 4] for i, prefix in enumerate(self._prefixes)] + motion + [self._apply]
        datagram = self._template.copy()
        datagram[self._slots] = values.view(np.uint8)
        body = datagram.tobytes()
        elements = b"".join(len(message).to_bytes(4, "big") + message for message in motion)
        return [body[:self._apply_at] + elements + body[self._apply_at:]]

    def _vmc_values(self, weights: np.ndarray) -> np.ndarray:
        """The big-endian float32 values of one VMC frame, in the order of its names."""
        parts = [weights] if self._perfect_sync else []
        if self._presets:
            presets = vrm_presets(weights)
            parts.append(np.array([presets[name] for name in VRM_PRESETS]))
        return np.concatenate(parts).astype(">f4")


def head_quaternion(head: Rotation) -> tuple[float, float, float, float]:
    """The head bone's local rotation (x, y, z, w) in Unity's axes: Quaternion.Euler(pitch, -yaw, -roll),
    Unity's order (roll about z first, then pitch about x, then yaw about y)."""
    def about(axis: int, degrees: float) -> np.ndarray:
        q = np.zeros(4)
        q[axis], q[3] = math.sin(math.radians(degrees) / 2), math.cos(math.radians(degrees) / 2)
        return q

    q = _product(_product(about(1, -head.yaw), about(0, head.pitch)), about(2, -head.roll))
    x, y, z, w = (float(v) for v in q)
    return x, y, z, w


def eye_target(eyes: Rotation) -> tuple[float, float, float]:
    """The eyes' look-at point in Unity's axes, EYE_TARGET_M ahead of the head: where the gaze of
    `eyes` (pitch down, yaw to the face's left) meets it."""
    pitch, yaw = math.radians(eyes.pitch), math.radians(eyes.yaw)
    return (-EYE_TARGET_M * math.cos(pitch) * math.sin(yaw), -EYE_TARGET_M * math.sin(pitch),
            EYE_TARGET_M * math.cos(pitch) * math.cos(yaw))


def vmc_motion(motion: Motion | None) -> list[bytes]:
    """The head's Bone/Pos and the eyes' Set/Eye messages for `motion`, each while that motion is on."""
    messages = []
    if motion is not None and motion.head is not None:
        messages.append(_BONE_PREFIX + _BONE_ARGS.pack(0.0, 0.0, 0.0, *head_quaternion(motion.head)))
    if motion is not None and motion.eyes is not None:
        messages.append(_EYE_PREFIX + _EYE_ARGS.pack(1, *eye_target(motion.eyes)))
    return messages


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The Hamilton product a b of quaternions (x, y, z, w): b's rotation, then a's."""
    (ax, ay, az, aw), (bx, by, bz, bw) = a, b
    return np.array([aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz])


_BONE_PREFIX = _message(VMC_BONE, ("Head", "s"), *[(0.0, "f")] * 7).build().dgram[:-_BONE_ARGS.size]
_EYE_PREFIX = _message(VMC_EYE, (1, "i"), *[(0.0, "f")] * 3).build().dgram[:-_EYE_ARGS.size]


def _vmc_template(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The VMC bundle for `names` with every value 0, and the byte positions of their float values in it."""
    bundle = OscBundleBuilder(IMMEDIATELY)
    ends = []
    position = _BUNDLE_HEADER_BYTES
    for name in names:
        message = _message(VMC_VAL, (name, "s"), (0.0, "f")).build()
        bundle.add_content(message)
        position += 4 + message.size  # each element is an int32 size, then the message
        ends.append(position)  # the value is the message's last 4 bytes
    bundle.add_content(OscMessageBuilder(VMC_APPLY).build())
    template = np.frombuffer(bundle.build().dgram, dtype=np.uint8)
    slots = (np.array(ends)[:, None] + np.arange(-4, 0)).ravel()
    return template, slots
