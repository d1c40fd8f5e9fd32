"""Peers and frames for the WebSocket server's tests: raw HTTP and raw WebSocket clients."""
from __future__ import annotations

import base64
import contextlib
import http.client
import os
import socket
from collections.abc import Iterator

import numpy as np

from emotalk_stream.training.blendshapes import COUNT, INDEX


@contextlib.contextmanager
def stalled_client(port: int) -> Iterator[socket.socket]:
    """A client that completes the WebSocket handshake and then never reads, behind a 4 KB window."""
    with socket.socket() as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting
        raw.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        raw.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += raw.recv(1)  # byte by byte: not one byte of the frames after the headers
        assert reply.startswith(b"HTTP/1.1 101"), reply
        yield raw


def pose(**weights: float) -> np.ndarray:
    out = np.zeros(COUNT, dtype=np.float32)
    for name, value in weights.items():
        out[INDEX[name]] = value
    return out


def get(port: int, path: str) -> tuple[int, str, bytes]:
    """GET `path` exactly as written: http.client does not normalise it."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()
