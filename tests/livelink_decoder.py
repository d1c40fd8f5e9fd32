"""A Live Link Face packet decoder written from the Live Link Face packet layout (the parser in
Unreal's AppleARKitFaceSupport plugin), independent of the encoder it checks."""
from __future__ import annotations

import struct

import numpy as np


def decode(packet: bytes) -> dict:
    """Packet version 6, big-endian; the whole packet must be used."""
    position = 0

    def take(fmt: str) -> tuple:
        nonlocal position
        values = struct.unpack_from(fmt, packet, position)
        position += struct.calcsize(fmt)
        return values

    def string() -> str:
        nonlocal position
        (length,) = take(">i")
        text = packet[position:position + length].decode("utf-8")
        position += length
        return text

    (version,) = take(">B")
    device, subject = string(), string()
    frame_number, sub_frame, numerator, denominator, count = take(">ifiiB")
    values = take(f">{count}f")
    assert position == len(packet), "bytes left over after the values"
    return dict(version=version, device=device, subject=subject, frame=frame_number, sub_frame=sub_frame,
                rate=(numerator, denominator), count=count, values=np.array(values, dtype=np.float32))
