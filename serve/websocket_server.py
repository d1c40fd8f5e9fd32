"""The WebSocket front end of `emotalk-serve`: sockets and HTTP around protocol.py and the hub.

    WebSocket /v1/stream   one session per connection (docs/serving.md); token-protected
    GET /                  the page (serve/page.py)
    GET /stats             the hub's counters as JSON; token-protected
    GET /health            200 "ok"

Each connection has two tasks: this one reads the client's messages (audio, controls, end) with an
idle timeout, and a sender writes the session's frames as they come. A sender that cannot write
for `STALL_S` has a client that stopped reading: the connection is cut, the others never wait.
"""
from __future__ import annotations

import asyncio
import errno
import http
import json
import logging
import socket
import ssl

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..engine import Controls
from ..streamer.controls import control_state
from ..streamer.face import FaceSettings
from ..streamer.websocket_sink import (
    SEND_BUFFER_BYTES, WRITE_LIMIT_BYTES, OpenConnections, _peer, _response, local_address, token_refusal,
)
from ..training.errors import UserError
from . import protocol
from .hub import STALL_S, Session, SessionHub, SessionRefused
from .page import CSP, asset
from .protocol import GOING_AWAY, INTERNAL, NORMAL, POLICY, TRY_LATER, ProtocolError, close_reason

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 1.0  # for closing handshakes; connections still open then are cut off
FLUSH_TIMEOUT_S = 2.0  # how long clients get to take their final frames at shutdown
EXTRA_CONNECTIONS = 16  # connections beyond two per session (handshakes, hellos, closing ones) before 503


class StreamServer:
    """Serves `hub` over WebSocket and HTTP on `host`:`port` (0: any free port)."""

    def __init__(self, hub: SessionHub, host: str = "127.0.0.1", port: int = 8765, *, token: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, idle_timeout: float = IDLE_TIMEOUT_S,
                 sock: socket.socket | None = None):
        """`sock`: a listening socket made already (a worker process's, on the server's port; serve/workers.py)
        instead of host:port."""
        self.hub = hub
        self._sock = sock
        self.host, self.port = host, port
        self._token = token.encode() if token else None
        self._ssl = ssl_context
        self.idle_timeout = idle_timeout
        self._server: Server | None = None
        self._connections = OpenConnections()
        self._senders: set[asyncio.Task] = set()  # each session's frame writer, until its close
        self._stopping = False

    @property
    def url(self) -> str:
        """The WebSocket endpoint, as a client on this machine reaches it."""
        return f"{'wss' if self._ssl else 'ws'}://{self._address()}{protocol.PATH}"

    @property
    def page_url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://{self._address()}/"

    def _address(self) -> str:
        return local_address(self.host, self.port)

    async def start(self) -> None:
        """Listen; a port in use or an address not of this machine is a `UserError`."""
        try:
            where = {"sock": self._sock} if self._sock is not None else {"host": self.host, "port": self.port}
            self._server = await serve(
                self._handle, **where, process_request=self._http, ssl=self._ssl,
                max_size=protocol.MAX_MESSAGE_BYTES, write_limit=WRITE_LIMIT_BYTES, close_timeout=CLOSE_TIMEOUT_S,
                create_connection=self._connections.track)
        except OSError as exc:
            raise UserError(bind_error(exc, "--port", self.host, self.port)) from None
        self.port = self._server.sockets[0].getsockname()[1]

    def stop_accepting(self) -> None:
        """Shutdown, first part: no new connections; open sessions go on until the hub stops."""
        self._stopping = True
        if self._server is not None:
            self._server.server.close()  # the listening socket only: `Server.close` works once and closes all

    async def close(self) -> None:
        """Shutdown, last part (after `hub.stop()`): let clients take their final frames, then close
        every connection (1001) and the server."""
        self.stop_accepting()
        if self._senders:
            await asyncio.wait(set(self._senders), timeout=FLUSH_TIMEOUT_S)
        if self._server is None:
            return
        await self._connections.close(self._server, CLOSE_TIMEOUT_S, GOING_AWAY, "server shutting down")

    # -- HTTP --

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path in (protocol.PATH, "/stats"):
            refusal = token_refusal(request.headers, query, self._token)
            if refusal is not None:
                log.info("refused %s: %s", _peer(connection), refusal)
                return _response(http.HTTPStatus.UNAUTHORIZED, "text/plain", f"{refusal}\n".encode(),
                                 {"WWW-Authenticate": "Bearer"})
        upgrade = "Upgrade" in request.headers
        if path == protocol.PATH:
            if self._stopping:
                return _response(http.HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"server shutting down\n")
            if len(self._connections) > 2 * self.hub.max_streams + EXTRA_CONNECTIONS:
                return _response(http.HTTPStatus.SERVICE_UNAVAILABLE, "text/plain",
                                 b"too many connections: try again later\n")
            return None
        if path == "/stats" and not upgrade:
            return _response(http.HTTPStatus.OK, "application/json", json.dumps(self.hub.stats()).encode())
        if path == "/health" and not upgrade:
            return _response(http.HTTPStatus.OK, "text/plain", b"ok\n")
        found = None if upgrade else asset(path)
        if found is not None:
            return _response(http.HTTPStatus.OK, *found, {"Cache-Control": "no-cache", "Content-Security-Policy": CSP})
        return _response(http.HTTPStatus.NOT_FOUND, "text/plain",
                         f"not found; sessions are at {protocol.PATH}, the page at /\n".encode())

    # -- one session per connection --

    async def _handle(self, connection: ServerConnection) -> None:
        connection.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                                  SEND_BUFFER_BYTES)
        try:
            await self._session(connection)
        except ProtocolError as exc:
            log.info("%s: closed %d: %s", _peer(connection), exc.code, exc.reason)
            await connection.close(exc.code, close_reason(exc.reason))
        except ConnectionClosed:
            pass

    async def _session(self, connection: ServerConnection) -> None:
        peer = _peer(connection)
        hello = protocol.parse_hello(await self._receive(connection, "no hello"))
        decoder = protocol.PcmDecoder(hello)
        try:
            controls, face = protocol.apply_controls(self.hub.engine, Controls(), FaceSettings(), hello.controls,
                                                     f"ws {peer}")
        except UserError as exc:
            raise ProtocolError(POLICY, str(exc)) from None
        if self._stopping:
            raise ProtocolError(GOING_AWAY, "server shutting down")
        try:
            session = self.hub.open(controls, face, motion=not hello.binary_frames)
        except SessionRefused as exc:
            raise ProtocolError(TRY_LATER, exc.reason) from None
        log.info("session %s from %s: %d Hz %s, %d channel(s)", session.id, peer, hello.sample_rate, hello.format,
                 hello.channels)
        sender: asyncio.Task | None = None
        try:
            await connection.send(protocol.ready_message(session.id, self.hub.engine, session.fps,
                                                         control_state(self.hub.engine, session.controls, session.face)))
            sender = asyncio.create_task(self._send_frames(connection, session, hello.binary_frames))
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
            await self._receive_audio(connection, session, decoder, peer)
            await sender
        finally:
            if sender is not None:
                sender.cancel()
            session.close()

    async def _receive(self, connection: ServerConnection, silence: str) -> str | bytes:
        try:
            async with asyncio.timeout(self.idle_timeout):  # not wait_for: that makes a task per message
                return await connection.recv()
        except TimeoutError:
            raise ProtocolError(GOING_AWAY, f"idle: {silence} for {self.idle_timeout:g} s") from None

    async def _receive_audio(self, connection: ServerConnection, session: Session, decoder: protocol.PcmDecoder,
                             peer: str) -> None:
        """Audio and controls until the client's end of input."""
        while True:
            message = await self._receive(connection, "no audio or message")
            if self._stopping:
                continue  # the hub is finishing the session: its final frames and the close are coming
            if isinstance(message, bytes):
                try:
                    session.feed(decoder.decode(message))
                except UserError as exc:
                    raise ProtocolError(POLICY, str(exc)) from None
                continue
            changes = protocol.parse_message(message)
            if changes is None:
                session.feed(decoder.flush())
                session.finish()
                return
            try:
                session.set_controls(*protocol.apply_controls(self.hub.engine, session.controls, session.face,
                                                              changes, f"ws {peer}"))
            except UserError as exc:
                await connection.send(protocol.error_message(str(exc)))

    async def _send_frames(self, connection: ServerConnection, session: Session, binary: bool) -> None:
        """Every frame as soon as it is ready; then close 1000 after the final one, or with the reason
        the session ended early."""
        emotions = self.hub.engine.cfg.emotion_labels
        final = False
        async for frame in session.frames():
            message = protocol.frame_bytes(frame, emotions) if binary else protocol.frame_text(frame)
            try:
                async with asyncio.timeout(STALL_S):
                    await connection.send(message)
            except TimeoutError:
                log.warning("session %s: client %s stopped reading for %.0f s: disconnected", session.id,
                            _peer(connection), STALL_S)
                session.close()
                connection.transport.abort()
                return
            except ConnectionClosed:  # the client left; its receiving side ends the session
                return
            final = frame.final
        if self._stopping:
            await connection.close(GOING_AWAY, "server shutting down")
        elif final:
            await connection.close(NORMAL)
        elif session.error is not None:
            await connection.close(INTERNAL, close_reason(session.error))


def bind_error(exc: OSError, option: str, host: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"{option} {port}: the port is in use; choose another port or stop the program using it"
    if exc.errno == errno.EACCES:
        return f"{option} {port}: the port needs administrator rights; choose a port above 1023"
    return (f"--host {host}: cannot listen there ({exc.strerror or exc}); use an address of this machine, "
            f"127.0.0.1 for this machine only or 0.0.0.0 for every network")
