"""Frames as JSON over WebSocket to browser avatars, plus the live viewer page on the same port.

    GET /            the viewer (streamer/viewer/index.html), and the scripts and style it loads
    GET /viewer.json {"avatar": "/avatar.vrm" | null, "audio": "/audio.wav" | null}: what the two below hold
    GET /avatar.vrm  the --avatar model, as given (token required, as for /ws)
    GET /audio.wav   a --wav source's audio, mono 16-bit at its own rate, for the viewer to play in sync
                     with the frames (token required, as for /ws)
    WebSocket /ws    one JSON text message per frame, to every client:
                     {"frame": 12, "time": 0.4, "fps": 30, "weights": {"browDownLeft": 0.0123, ...all 52},
                      "emotion": "happy" | null, "final": false}
                     text sent by a client is a control message (streamer/controls.py), answered
                     {"ok": true} or {"error": "reason"}
    WebSocket /ws?controls=1   the same, and {"controls": {...}} (ControlBoard.state) on connecting and
                     whenever the controls change, before the next frame

Clients can change the face, so the upgrade to /ws is guarded: with a token, only requests that
carry it (`?token=` or `Authorization: Bearer`) get in (401 otherwise); and a browser's Origin must
be the viewer's own or one the user allowed (403 otherwise), so no other web page can open the
socket from a visitor's browser (cross-site WebSocket hijacking). Clients without an Origin
(programs, not browsers) pass that check. The viewer page holds no secret and needs no token.

The server runs on its own asyncio loop in a daemon thread. Each frame is encoded once, in the
sink's thread, and handed to the loop; each client has a small queue that drops its oldest frame
when the client does not keep up, so a stalled browser never slows the stream or other clients.
"""
from __future__ import annotations

import asyncio
import errno
import hmac
import http
import io
import json
import logging
import socket
import threading
from collections import deque
from collections.abc import Sequence
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import soundfile
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from ..training.errors import UserError
from .address import all_interfaces
from .controls import MAX_JSON_BYTES, ControlBoard
from .frames import OutFrame, frame_json
from .sink import Sink

log = logging.getLogger(__name__)

WS_PATH = "/ws"
# The only files ever served, from streamer/viewer/: request paths are looked up here and never
# joined to a folder, so no path can reach another file. The face, the controls' form and the look
# are shared with emotalk-serve's demo page, which serves `SHARED` too. vendor/ holds three.js and
# three-vrm (scripts/vendor_viewer.sh), loaded only when an avatar is shown.
SHARED = {"/face.js": "face.js", "/controls.js": "controls.js", "/viewer.css": "viewer.css"}
VENDOR = ("three.core.min.js", "three.module.min.js", "GLTFLoader.min.js", "three-vrm.module.min.js")
PAGES = {"/": "index.html", "/index.html": "index.html", "/viewer.js": "viewer.js", "/avatar.js": "avatar.js",
         **SHARED, **{f"/vendor/{name}": f"vendor/{name}" for name in VENDOR}}
CONFIG_PATH = "/viewer.json"
AVATAR_PATH = "/avatar.vrm"
AUDIO_PATH = "/audio.wav"
MAX_AUDIO_S = 15 * 60  # longer files are not offered to the viewer: the browser holds the whole clip decoded
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".json": "application/json",
                 ".vrm": "model/gltf-binary", ".wav": "audio/wav"}
MAX_MESSAGE_BYTES = 16 * MAX_JSON_BYTES  # larger messages close that client (1009); smaller ones get a reply
START_TIMEOUT_S = 10.0
STALL_S = 2.0  # a client whose queue stays full this long has stopped reading and is disconnected
LOSSLESS_STALL_S = 10.0  # the same for a file streamed faster than real time: a busy client may lag
FLUSH_TIMEOUT_S = 0.5  # how long clients get to receive the final frame before the server closes
CLOSE_TIMEOUT_S = 0.5  # for the closing handshakes; connections still open then are cut off
# Small network buffers per client (a few dozen frames): a slow client then loses old frames in its
# queue instead of receiving seconds-old ones from the kernel's buffer.
SEND_BUFFER_BYTES = 32 * 1024
WRITE_LIMIT_BYTES = 4 * 1024
# The viewer's own files and its inline import map only; no request leaves the viewer's own server.
# blob: is the avatar's textures, which three.js's glTF loader unpacks from the model in memory.
VIEWER_CSP = ("default-src 'none'; style-src 'self'; script-src 'self' 'unsafe-inline'; "
              "connect-src 'self' blob:; img-src 'self' data: blob:")


class _Client:
    """One connected browser: its newest frames, waiting to be written by its own task."""

    def __init__(self, connection: ServerConnection, capacity: int, wants_controls: bool = False):
        self.connection = connection
        self.wants_controls = wants_controls  # asked for the controls in effect (/ws?controls=1)
        self.controls_version = -1  # the ControlBoard version it was last sent
        self.pending: deque[str] = deque()
        self.capacity = capacity
        self.ready = asyncio.Event()  # frames are waiting
        self.idle = asyncio.Event()  # every queued frame has been written
        self.idle.set()
        self.room = asyncio.Event()  # a frame was taken from a full queue
        self.full_since: float | None = None  # loop time since when the queue has stayed full


class WebSocketSink(Sink):
    """Streams frames to any number of WebSocket clients and takes their control messages."""

    def __init__(self, host: str, port: int, board: ControlBoard | None = None, client_queue: int = 8, *,
                 token: str | None = None, allowed_origins: Sequence[str] = (), avatar: str | None = None,
                 audio: str | None = None):
        """`token`: the secret a client must send; `allowed_origins`: web pages (scheme://host[:port])
        besides the viewer itself whose scripts may connect; `avatar`: a VRM file for the viewer to
        show; `audio`: the audio file streamed, for the viewer to play."""
        super().__init__(f"ws {host}:{port}")
        self.host = host
        self.port = port
        self.board = board
        self._option = f"--ws {host}:{port}"
        if token is not None and not (token and token.isascii() and token.isprintable() and " " not in token):
            raise UserError("--token must be printable ASCII without spaces, so that every client sends it "
                            "alike: e.g. the output of `openssl rand -hex 16`")
        self._token = token.encode() if token else None
        self._origins = frozenset(_origin_key(origin) for origin in allowed_origins)
        self._client_queue = client_queue
        self._clients: set[_Client] = set()
        self._connections = OpenConnections()  # every TCP connection, even mid-handshake
        self._files: dict[str, bytes] = {}
        self._avatar = avatar
        self._audio = audio
        self._media: dict[str, bytes] = {}  # AVATAR_PATH, AUDIO_PATH: served with the token only
        self._config = b""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._server: Server | None = None

    @property
    def clients(self) -> int:
        """How many WebSocket clients are connected now."""
        return len(self._clients)

    @property
    def url(self) -> str:
        """Where a browser on this machine finds the viewer."""
        return f"http://{self._address()}/"

    def _address(self) -> str:
        return local_address(self.host, self.port)

    def _open(self) -> None:
        viewer = resources.files(__package__).joinpath("viewer")
        try:
            self._files = {name: viewer.joinpath(*name.split("/")).read_bytes() for name in set(PAGES.values())}
        except OSError as exc:
            raise UserError(f"{self._option}: the viewer page is missing ({exc}); "
                            "reinstall emotalk-stream") from None
        self._media = {}
        if self._avatar is not None:
            self._media[AVATAR_PATH] = read_avatar(self._avatar)
        if self._audio is not None and (audio := viewer_audio(self._audio)) is not None:
            self._media[AUDIO_PATH] = audio
        self._config = json.dumps({"avatar": AVATAR_PATH if AVATAR_PATH in self._media else None,
                                   "audio": AUDIO_PATH if AUDIO_PATH in self._media else None}).encode()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name=f"{self.name} loop", daemon=True)
        self._loop_thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(START_TIMEOUT_S)
        except OSError as exc:
            self._stop_loop()
            raise UserError(self._bind_error(exc)) from None
        query = "?token=TOKEN" if self._token else ""
        log.info("%s: viewer at %s%s, frames at ws://%s%s%s", self.name, self.url, query, self._address(),
                 WS_PATH, query)
        self._warn_if_exposed()

    def _warn_if_exposed(self) -> None:
        """Say so when the stream can be reached from other machines, and what that allows."""
        if not all_interfaces(self.host):
            return
        if self._token:
            log.info("%s listens on every network interface: only clients with the token can watch and "
                     "control the stream, but ws:// sends it unencrypted; use 127.0.0.1 on untrusted "
                     "networks", self.name)
        else:
            log.warning("%s listens on every network interface: anyone on your network can watch and "
                        "control the stream; use --token, or 127.0.0.1 for this machine only", self.name)

    async def _start(self) -> None:
        self._server = await serve(
            self._serve_client, self.host, self.port, process_request=self._http,
            max_size=MAX_MESSAGE_BYTES, write_limit=WRITE_LIMIT_BYTES, close_timeout=CLOSE_TIMEOUT_S,
            create_connection=self._connections.track)
        self.port = self._server.sockets[0].getsockname()[1]
        self.name = f"ws {self.host}:{self.port}"

    def _bind_error(self, exc: OSError) -> str:
        if exc.errno == errno.EADDRINUSE:
            return f"{self._option}: port {self.port} is in use; choose another port or stop the program using it"
        if exc.errno == errno.EACCES:
            return f"{self._option}: port {self.port} needs administrator rights; choose a port above 1023"
        return (f"{self._option}: cannot listen on {self.host!r} ({exc.strerror or exc}); use an address of this "
                f"machine, 127.0.0.1 for this machine only or 0.0.0.0 for every network")

    def _send(self, frame: OutFrame) -> None:
        text = frame_json(frame)
        if self.lossless:  # every client gets every frame, or is disconnected when it stalls
            asyncio.run_coroutine_threadsafe(self._deliver_all(text), self._loop).result()
        else:
            self._loop.call_soon_threadsafe(self._broadcast, text)

    def _broadcast(self, text: str) -> None:
        """On the loop: queue one encoded frame for every client, dropping each one's oldest if
        full; a client whose queue stays full for STALL_S has stopped reading and is disconnected."""
        dropped, now = 0, self._loop.time()
        for client in list(self._clients):
            if len(client.pending) >= client.capacity:
                client.pending.popleft()
                dropped += 1
                client.full_since = client.full_since or now
                if now - client.full_since > STALL_S:
                    self._disconnect(client)
                    continue
            else:
                client.full_since = None
            self._queue_for(client, text)
        if dropped:
            with self._wake:  # the lock `submit` counts its own drops under
                self.drops += dropped

    async def _deliver_all(self, text: str) -> None:
        """Lossless: wait until every client has room for `text` (LOSSLESS_STALL_S at most each)."""
        for client in list(self._clients):
            deadline = self._loop.time() + LOSSLESS_STALL_S
            while len(client.pending) >= client.capacity and client in self._clients:
                client.room.clear()
                try:
                    await asyncio.wait_for(client.room.wait(), deadline - self._loop.time())
                except TimeoutError:
                    self._disconnect(client)
            if client in self._clients:
                self._queue_for(client, text)

    @staticmethod
    def _queue_for(client: _Client, text: str) -> None:
        client.pending.append(text)
        client.ready.set()
        client.idle.clear()

    def _disconnect(self, client: _Client) -> None:
        """Drop a client that stopped reading: it no longer holds frames or the stream back."""
        self._clients.discard(client)
        client.pending.clear()
        client.idle.set()
        log.warning("%s: client %s stopped reading for %.0f s: disconnected", self.name,
                    _peer(client.connection), LOSSLESS_STALL_S if self.lossless else STALL_S)
        client.connection.transport.abort()

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        """Let allowed WebSocket upgrades on /ws through; answer plain GETs with the viewer or 404."""
        path, _, query = request.path.partition("?")
        if path == WS_PATH:
            refusal = self._refusal(request.headers, query)
            if refusal is None:
                return None
            log.info("%s: refused %s: %s", self.name, _peer(connection), refusal[1])
            return _refuse(*refusal)
        if path in PAGES and "Upgrade" not in request.headers:
            return _response(http.HTTPStatus.OK, content_type_of(PAGES[path]), self._files[PAGES[path]],
                             {"Cache-Control": "no-cache", "Content-Security-Policy": VIEWER_CSP})
        if path == CONFIG_PATH and "Upgrade" not in request.headers:
            return _response(http.HTTPStatus.OK, content_type_of(path), self._config, {"Cache-Control": "no-cache"})
        if path in self._media and "Upgrade" not in request.headers:
            reason = token_refusal(request.headers, query, self._token)
            if reason is not None:
                return _refuse(http.HTTPStatus.UNAUTHORIZED, reason)
            return _response(http.HTTPStatus.OK, content_type_of(path), self._media[path], {"Cache-Control": "no-cache"})
        return _response(http.HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8",
                         f"not found; the viewer is at / and frames are at {WS_PATH}\n".encode())

    def _refusal(self, headers: Headers, query: str) -> tuple[http.HTTPStatus, str] | None:
        """Why this upgrade to /ws is refused (status, reason), or None to let it in."""
        hosts = headers.get_all("Host")
        if not all(self._origin_allowed(origin, hosts) for origin in headers.get_all("Origin")):
            return http.HTTPStatus.FORBIDDEN, "origin not allowed; start emotalk-stream with --allow-origin ORIGIN"
        reason = token_refusal(headers, query, self._token)
        return None if reason is None else (http.HTTPStatus.UNAUTHORIZED, reason)

    def _origin_allowed(self, origin: str, hosts: list[str]) -> bool:
        """The viewer's own origin (the host this request was sent to), or one the user allowed."""
        try:
            same_host = len(hosts) == 1 and urlsplit(origin).netloc.lower() == hosts[0].lower()
        except ValueError:  # e.g. an unclosed IPv6 bracket
            return False
        return same_host or origin.lower() in self._origins

    async def _serve_client(self, connection: ServerConnection) -> None:
        peer = _peer(connection)
        sock = connection.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        query = parse_qs(urlsplit(connection.request.path).query)
        client = _Client(connection, self._client_queue, self.board is not None and query.get("controls") == ["1"])
        self._clients.add(client)
        writer = asyncio.create_task(self._write(client))
        log.info("%s: client %s connected (%d now)", self.name, peer, len(self._clients))
        try:
            async for message in connection:
                await connection.send(json.dumps(self._control(message, peer)))
                client.ready.set()  # its writer sends the changed controls, if it asked for them
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            writer.cancel()
            log.info("%s: client %s disconnected (%d left)", self.name, peer, len(self._clients))

    async def _write(self, client: _Client) -> None:
        """Send this client's queued frames, oldest first, as fast as it reads them."""
        try:
            while True:
                if client.wants_controls:
                    await self._send_controls(client)
                if not client.pending:
                    client.idle.set()
                    client.ready.clear()
                    await client.ready.wait()
                    continue
                await client.connection.send(client.pending.popleft())
                client.room.set()
        except ConnectionClosed:
            client.pending.clear()
            client.idle.set()

    async def _send_controls(self, client: _Client) -> None:
        """The controls in effect, to a client that asked for them, if they changed since it last got them."""
        version = self.board.current[2]
        if version != client.controls_version:
            client.controls_version = version
            await client.connection.send(json.dumps({"controls": self.board.state()}))

    def _control(self, message: str | bytes, peer: str) -> dict[str, object]:
        """The reply to one message from a client: controls are JSON text, applied by the board."""
        if isinstance(message, bytes):
            return {"error": 'control messages are JSON text such as {"emotion": "happy:0.7"}, not binary'}
        size = len(message.encode())
        if size > MAX_JSON_BYTES:
            return {"error": f"control message of {size} bytes; the limit is {MAX_JSON_BYTES}"}
        if self.board is None:
            return {"error": "controls are disabled on this stream"}
        reason = self.board.submit_json(message, origin=f"ws {peer}")
        return {"ok": True} if reason is None else {"error": reason}

    def _shutdown(self) -> None:
        if self._loop is None:
            return
        stopped = asyncio.run_coroutine_threadsafe(self._stop_server(), self._loop)
        try:
            stopped.result(FLUSH_TIMEOUT_S + CLOSE_TIMEOUT_S + 1.0)
        except TimeoutError:
            stopped.cancel()
            log.warning("%s: clients did not close in time; closing anyway", self.name)
        self._stop_loop()

    async def _stop_server(self) -> None:
        """Give clients the final frame, then close every connection and the listening socket."""
        flushed = asyncio.gather(*(client.idle.wait() for client in self._clients))
        try:
            await asyncio.wait_for(flushed, FLUSH_TIMEOUT_S)
        except TimeoutError:
            log.info("%s: a client did not take the final frame in %.1f s", self.name, FLUSH_TIMEOUT_S)
        await self._connections.close(self._server, CLOSE_TIMEOUT_S)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(START_TIMEOUT_S)
        self._loop.close()
        self._loop = self._loop_thread = self._server = None



class OpenConnections:
    """Every TCP connection of a `websockets` server, even mid-handshake, so that a shutdown can cut
    the ones that would never close politely. `track` is the server's `create_connection`."""

    def __init__(self) -> None:
        self._open: set[ServerConnection] = set()

    def __len__(self) -> int:
        return len(self._open)

    def track(self, protocol: ServerProtocol, server: Server, **options: Any) -> ServerConnection:
        """Create each TCP connection's websockets connection, remembered until it is lost."""
        connection = ServerConnection(protocol, server, **options)
        self._open.add(connection)
        connection.connection_lost_waiter.add_done_callback(lambda _: self._open.discard(connection))
        return connection

    async def close(self, server: Server, timeout: float, code: int = 1001, reason: str = "") -> None:
        """Close `server` and its connections (`code`, `reason`); cut those still open after `timeout`."""
        server.close(code=code, reason=reason)
        try:
            await asyncio.wait_for(server.wait_closed(), timeout)
        except TimeoutError:
            # A stalled client never drains for the closing handshake, and a browser's idle
            # preconnection never sends its request: neither would ever close politely.
            for connection in list(self._open):
                connection.transport.abort()
            await server.wait_closed()


def _response(status: http.HTTPStatus, content_type: str, body: bytes,
              extra: dict[str, str] | None = None) -> Response:
    headers = Headers({"Content-Type": content_type, "Content-Length": str(len(body)),
                       "X-Content-Type-Options": "nosniff", "Connection": "close", **(extra or {})})
    return Response(status.value, status.phrase, headers, body)


def content_type_of(name: str) -> str:
    """The Content-Type of one of the pages' files, by its suffix."""
    return CONTENT_TYPES[name[name.rindex("."):]]


def read_avatar(path: str, size: int = -1) -> bytes:
    """The first `size` bytes (all by default) of an `--avatar` file, which must be binary glTF (a .vrm)."""
    try:
        with open(path, "rb") as file:
            data = file.read(size)
    except OSError as exc:
        raise UserError(f"--avatar {path}: cannot read it ({exc.strerror or exc})") from None
    if data[:4] != b"glTF":
        raise UserError(f"--avatar {path} is not a VRM file (binary glTF, which starts with 'glTF'); "
                        "export the model as VRM 0.x or 1.0")
    return data


def viewer_audio(path: str) -> bytes | None:
    """`path` as a mono 16-bit WAV at its own rate, for the viewer to play with the frames; None (and
    the viewer plays nothing) for a file longer than MAX_AUDIO_S or one that cannot be read."""
    try:
        seconds = soundfile.info(path).duration
        if seconds > MAX_AUDIO_S:
            log.info("%s is %.0f s long: the viewer plays files up to %d s, so it gets no audio", path, seconds,
                     MAX_AUDIO_S)
            return None
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as exc:  # soundfile's LibsndfileError is a RuntimeError
        log.warning("the viewer gets no audio: cannot read %s (%s)", path, exc)
        return None
    out = io.BytesIO()
    soundfile.write(out, samples.mean(axis=1), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def _refuse(status: http.HTTPStatus, reason: str) -> Response:
    extra = {"WWW-Authenticate": "Bearer"} if status == http.HTTPStatus.UNAUTHORIZED else None
    return _response(status, "text/plain; charset=utf-8", f"{reason}\n".encode(), extra)


def _origin_key(origin: str) -> str:
    """`origin` as browsers send it (scheme://host[:port], lower case), or a UserError."""
    try:
        parts = urlsplit(origin.strip())
        valid = parts.scheme in ("http", "https") and bool(parts.netloc) and parts.path in ("", "/") and not (
            parts.query or parts.fragment)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        valid = False
    if not valid:
        raise UserError(f"--allow-origin {origin!r} is not an origin: give scheme://host[:port] as the "
                        f"browser's address bar shows it, e.g. http://localhost:3000")
    return f"{parts.scheme}://{parts.netloc}".lower()


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "unknown"


def local_address(host: str, port: int) -> str:
    """HOST:PORT as a client on this machine reaches a server listening on `host`."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"{f'[{host}]' if ':' in host else host}:{port}"


def token_refusal(headers: Headers, query: str, token: bytes | None) -> str | None:
    """Why a request without the right token is refused (`?token=` or `Authorization: Bearer`), or None."""
    if token is None:
        return None
    # Header values and this query are decoded as latin-1 here: encoding back gives the bytes sent.
    given = parse_qs(query, encoding="latin-1").get("token", [])
    given += [credentials.strip() for scheme, _, credentials in
              (value.partition(" ") for value in headers.get_all("Authorization")) if scheme.lower() == "bearer"]
    if not given:
        return "token required: add ?token=TOKEN or send Authorization: Bearer TOKEN"
    if not any(hmac.compare_digest(value.encode("latin-1"), token) for value in given):
        return "wrong token"
    return None
