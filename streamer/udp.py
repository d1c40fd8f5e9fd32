"""Senders of UDP datagrams, one per frame but for unbundled VMC (OSC, iFacialMocap, Live Link Face),
connected to one receiver.

Connected sockets, so that Linux reports a receiver that is down (ICMP port unreachable) as an
error on a later send, which the Sink base reports once and retries.
"""
from __future__ import annotations

import logging
import socket
from abc import abstractmethod

from ..training.errors import UserError
from .frames import OutFrame
from .sink import Sink

log = logging.getLogger(__name__)


def connect_udp(host: str, port: int, option: str) -> socket.socket:
    """A UDP socket connected to `host`:`port`, resolved once; `option` names the flag in errors.

    Connected, so that Linux reports an unreachable receiver (ICMP) as an error on a later send.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise UserError(f"cannot resolve host {host!r} ({exc.strerror}): check {option}") from None
    # Prefer IPv4: "localhost" often resolves to ::1 first, and most avatar apps listen on IPv4.
    family, kind, proto, _, address = min(infos, key=lambda info: info[0] != socket.AF_INET)
    sock = socket.socket(family, kind, proto)
    try:
        sock.connect(address)
    except OSError as exc:
        sock.close()
        raise UserError(f"{option} {host}:{port}: cannot send there ({exc.strerror}); "
                        "check the address and the network") from None
    return sock


class UdpSink(Sink):
    """A sink that sends each frame's datagrams, in order, to one receiver."""

    def __init__(self, name: str, host: str, port: int, option: str):
        super().__init__(name)
        self.host, self.port, self._option = host, port, option
        self._sock: socket.socket | None = None

    def _open(self) -> None:
        self._sock = connect_udp(self.host, self.port, self._option)
        log.info("%s: sending to %s:%d", self.name, *self._sock.getpeername()[:2])

    def _shutdown(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, frame: OutFrame) -> None:
        assert self._sock is not None, "open() the sink first"
        for datagram in self.datagrams(frame):
            self._sock.send(datagram)

    @abstractmethod
    def datagrams(self, frame: OutFrame) -> list[bytes]:
        """The datagrams for `frame`, in the order they go out."""
