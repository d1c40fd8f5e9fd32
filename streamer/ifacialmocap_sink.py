"""iFacialMocap out: frames as the iPhone app's UDP text, so VTuber apps take us for a phone."""
from __future__ import annotations

from .frames import OutFrame
from .ifacialmocap import encode, pose_of
from .udp import UdpSink


class IFacialMocapSink(UdpSink):
    """Frames, with their head and eye angles, to an app's iFacialMocap receiver at `host`:`port`
    (default there: 49983)."""

    def __init__(self, host: str, port: int):
        super().__init__(f"ifacialmocap {host}:{port}", host, port, "--ifacialmocap")

    def datagrams(self, frame: OutFrame) -> list[bytes]:
        return [encode(frame.weights, pose_of(frame.motion))]
