"""Live Link Face out: the iPhone app's ARKit-mode UDP packet, so Unreal takes us for a phone.

Packet version 6, big-endian (Unreal's AppleARKitFaceSupport Live Link source, which listens on
UDP 11111; the layout the parsers in github.com/think-biq/LLV and github.com/aelzeiny/Animoji
read, and that of the app packets recorded in LLV's examples/dao.gesichter): uint8 6; int32 length +
UTF-8 device id; int32 length + UTF-8 subject; int32 frame number, float32 sub-frame, int32 rate
numerator, int32 rate denominator; uint8 61; 61 float32 in Unreal's EARFaceBlendShape order
(52 shapes, then the 9 head and eye rotations). Total 270 + len(id) + len(subject) bytes.

The rotations are the frame's head and eye angles (`head_motion.py`: ARKit's face-anchor axes, as
the app measures them) in degrees / 180, as Unreal's AppleARKitFaceSupport maps -180..180 to -1..1
(its ToBlendShapeMap); an eye's roll is 0, and both eyes look the same way. The Live Link Face CSV
recording (`recorder.py`) holds the same values.
"""
from __future__ import annotations

import struct
import uuid

import numpy as np

from ..training.blendshapes import LIVELINK_UDP_ORDER, to_named_order
from ..training.errors import UserError
from .frames import OutFrame
from .head_motion import REST, Motion
from .udp import UdpSink

PACKET_VERSION = 6
MAX_SUBJECT_BYTES = 64  # Unreal's receive buffer is small; the reference advises short names
_STRING_LENGTH = struct.Struct(">i")
_VERSION = struct.Struct(">B")
_TIME_AND_VALUES = struct.Struct(f">ifiiB{len(LIVELINK_UDP_ORDER)}f")


def rotation_values(motion: Motion | None) -> tuple[float, ...]:
    """The 9 head and eye values of Live Link Face (`blendshapes.ROTATIONS` order: HeadYaw, HeadPitch,
    HeadRoll, LeftEyeYaw ... RightEyeRoll) for `motion`, in degrees / 180; 0 where there is none."""
    head = eyes = REST
    if motion is not None:
        head, eyes = motion.head or REST, motion.eyes or REST
    eye = (eyes.yaw, eyes.pitch, eyes.roll)
    return tuple(degrees / 180.0 for degrees in (head.yaw, head.pitch, head.roll, *eye, *eye))


def encode_packet(weights: np.ndarray, frame_number: int, fps: int, subject: str, device_id: str,
                  rotations: tuple[float, ...] = ()) -> bytes:
    """One Live Link Face packet for (52,) EmoTalk-order `weights` and the 9 `rotations`
    (`rotation_values`, 0 without) at frame `frame_number` of `fps`."""
    device, name = device_id.encode(), subject.encode()
    values = to_named_order(np.asarray(weights, dtype=np.float32), LIVELINK_UDP_ORDER, rotations)
    return b"".join((
        _VERSION.pack(PACKET_VERSION),
        _STRING_LENGTH.pack(len(device)), device,
        _STRING_LENGTH.pack(len(name)), name,
        _TIME_AND_VALUES.pack(frame_number, 0.0, fps, 1, len(values), *values.tolist()),
    ))


def device_id_for(subject: str) -> str:
    """A stable 36-character UUID per subject, so Unreal keeps one source across restarts."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"emotalk-stream:livelink:{subject}")).upper()


class LiveLinkSink(UdpSink):
    """Frames as Live Link Face packets to Unreal's listener at `host`:`port` (default there: 11111)."""

    def __init__(self, host: str, port: int, subject: str = "EmoTalk"):
        size = len(subject.encode())
        if not subject.strip() or size > MAX_SUBJECT_BYTES:
            raise UserError(f"Live Link subject {subject!r} must be a name of 1 to {MAX_SUBJECT_BYTES} "
                            f"UTF-8 bytes (it has {size}); pass a short non-empty --subject")
        super().__init__(f"livelink {host}:{port}", host, port, "--livelink")
        self.subject = subject
        self.device_id = device_id_for(subject)

    def datagrams(self, frame: OutFrame) -> list[bytes]:
        return [encode_packet(frame.weights, frame.index, frame.fps, self.subject, self.device_id,
                              rotation_values(frame.motion))]
