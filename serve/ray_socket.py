"""WebSocket sessions inside a Ray Serve replica, served by the plain server's own session loop.

Serve's proxy hands each replica a Starlette `WebSocket`. `StarletteConnection` gives it the few
methods of a `websockets` connection that `StreamServer`'s session loop (websocket_server.py)
uses, so hello, audio, controls, frames, refusals and close codes are one code path for both
servers. The differences that remain come from Serve's proxy: the message size limit is checked
here, after the proxy has read the message (the proxy's own limit is 16 MiB), and sends never block,
because the proxy buffers frames, so a client that stops reading is not cut after `STALL_S`: it
ends when it stops sending (the idle timeout) or ends its input.
"""
from __future__ import annotations

import asyncio
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from .protocol import GOING_AWAY, MAX_MESSAGE_BYTES, TOO_BIG, ProtocolError, close_reason
from .websocket_server import StreamServer

log = logging.getLogger(__name__)

NO_STATUS = 1005  # RFC 6455: a close without a code


class StarletteConnection:
    """The part of `websockets.asyncio.server.ServerConnection` the session loop uses."""

    def __init__(self, websocket: WebSocket):
        self._ws = websocket
        client = websocket.client
        self.remote_address = (client.host, client.port) if client else None
        self.transport = self  # `transport.abort()` cuts a client off
        self._closing: asyncio.Task | None = None

    async def recv(self) -> str | bytes:
        """The next message; `ConnectionClosed` once the client has gone."""
        message = await self._ws.receive()
        if message["type"] == "websocket.disconnect":
            raise ConnectionClosed(Close(message.get("code", NO_STATUS), message.get("reason") or ""), None)
        data = message.get("text") if message.get("bytes") is None else message["bytes"]
        if len(data) > MAX_MESSAGE_BYTES:
            raise ProtocolError(TOO_BIG, f"message of {len(data)} bytes; the limit is {MAX_MESSAGE_BYTES}")
        return data

    async def send(self, message: str | bytes) -> None:
        try:
            if isinstance(message, bytes):
                await self._ws.send_bytes(message)
            else:
                await self._ws.send_text(message)
        except (WebSocketDisconnect, RuntimeError) as exc:  # RuntimeError: the proxy's side is closed
            raise ConnectionClosed(None, None) from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close once, like `websockets`: later calls do nothing."""
        if self._ws.application_state is WebSocketState.CONNECTED:
            try:
                await self._ws.close(code, reason)
            except (WebSocketDisconnect, RuntimeError):
                pass

    def abort(self) -> None:
        self._closing = asyncio.get_running_loop().create_task(self.close(GOING_AWAY, "connection cut"))


class ReplicaServer(StreamServer):
    """`StreamServer`'s sessions and shutdown (`stop_accepting`, `close`), on the connections Serve's
    proxy hands this replica instead of a socket of its own."""

    async def serve_connection(self, connection: StarletteConnection) -> None:
        """One session, from the hello to the close (accepted already)."""
        try:
            await self._session(connection)  # type: ignore[arg-type]  # duck-typed connection
        except ProtocolError as exc:
            log.info("%s: closed %d: %s", connection.remote_address, exc.code, exc.reason)
            await connection.close(exc.code, close_reason(exc.reason))
        except ConnectionClosed:
            pass
