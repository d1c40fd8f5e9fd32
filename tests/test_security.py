"""Security of the servers and of model loading, against real sockets, a real websockets client,
raw HTTP, headless Chromium and real malicious pickles.

Path traversal on the viewer's server is tested in test_websocket_sink.py (any other path is 404).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import shlex
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import torch
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from emotalk_stream.engine import Engine
from emotalk_stream.engine.artifact import MANIFEST_FILE, ONNX_FILE
from emotalk_stream.streamer import cli, launch
from emotalk_stream.streamer.address import all_interfaces, parse_listen_address
from emotalk_stream.streamer.controls import ControlBoard
from emotalk_stream.streamer.frames import OutFrame
from emotalk_stream.streamer.osc_control import OscControlServer
from emotalk_stream.streamer.websocket_sink import WebSocketSink
from emotalk_stream.training import importer
from emotalk_stream.training.checkpoint import load_model
from emotalk_stream.training.model_files import CONFIG_FILE, DEFAULT_ENGINE, DEFAULT_MODEL, WEIGHTS_FILE
from emotalk_stream.training.errors import UserError
from chromium import Tab
from waiting import free_port, wait_for
from ws_peers import get, pose

pytestmark = pytest.mark.usefixtures("time_limit")
TOKEN = "s3cret+/&=%?#~"  # URL syntax: it must survive every way of sending it
EXPOSED = "listens on every network interface"
TOKEN_REQUIRED = "token required: add ?token=TOKEN or send Authorization: Bearer TOKEN\n"


@pytest.fixture
def open_sink() -> Iterator[Callable[..., WebSocketSink]]:
    """Open WebSocketSinks (on 127.0.0.1, any port unless given), closed after the test."""
    opened: list[WebSocketSink] = []

    def make(host: str = "127.0.0.1", port: int = 0, **options: object) -> WebSocketSink:
        sink = WebSocketSink(host, port, **options)
        sink.open()
        opened.append(sink)
        return sink

    yield make
    for sink in opened:
        sink.close()


def client(sink: WebSocketSink, query: str = "", **options: object) -> ClientConnection:
    return connect(f"ws://127.0.0.1:{sink.port}/ws{query}", open_timeout=5, close_timeout=1, **options)


def refused(sink: WebSocketSink, query: str = "", **options: object) -> tuple[int, str]:
    """(status, body) of a refused WebSocket upgrade; fails if the upgrade was let in."""
    with pytest.raises(InvalidStatus) as refusal:
        client(sink, query, **options).close()
    response = refusal.value.response
    return response.status_code, response.body.decode()


def streams(sink: WebSocketSink, ws: ClientConnection) -> None:
    """Frames reach this client."""
    wait_for(lambda: sink.clients >= 1, "the client to connect")
    sink.submit(OutFrame(0, 0.0, 30, pose(jawOpen=0.5)))
    assert '"jawOpen":0.5' in ws.recv(timeout=5)


def raw_request(port: int, request: bytes) -> bytes:
    """Everything the server answers to `request` until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            raw.sendall(request)
        except (BrokenPipeError, ConnectionResetError):  # it may answer and close before reading it all
            pass
        answer = b""
        try:
            while chunk := raw.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def upgrade_request(headers: list[tuple[str, str]], path: str = "/ws") -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
             *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ---- addresses ----

@pytest.mark.parametrize("text, expected", [
    ("8765", ("127.0.0.1", 8765)), (":8765", ("127.0.0.1", 8765)), (" 8765 ", ("127.0.0.1", 8765)),
    ("0.0.0.0:8765", ("0.0.0.0", 8765)), ("localhost:1", ("localhost", 1)),
    ("[::1]:8765", ("::1", 8765)), ("[::]:8765", ("::", 8765)),
])
def test_a_listen_address_without_a_host_is_this_machine_only(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text, "--ws") == expected


@pytest.mark.parametrize("text", ["", "abc", "0", "65536", "127.0.0.1", "127.0.0.1:", "host:x"])
def test_a_bad_listen_address_names_the_option(text: str) -> None:
    with pytest.raises(UserError, match=r"^--ws .*port must be a number from 1 to 65535"):
        parse_listen_address(text, "--ws")


@pytest.mark.parametrize("host, every", [("", True), ("0.0.0.0", True), ("::", True), ("0:0::0", True),
                                         ("127.0.0.1", False), ("::1", False), ("localhost", False),
                                         ("192.168.1.20", False)])
def test_all_interfaces(host: str, every: bool) -> None:
    assert all_interfaces(host) is every


def cli_sink(board: ControlBoard, *options: str) -> WebSocketSink:
    """The WebSocketSink that `emotalk-stream OPTIONS` would stream to."""
    args = cli.build_parser().parse_args(["--wav", "speech.wav", *options])
    sinks = launch.make_sinks(launch.parse_outputs(args), args, board)
    assert len(sinks) == 1 and isinstance(sinks[0], WebSocketSink)
    return sinks[0]


def test_ws_port_alone_listens_on_this_machine_only(board: ControlBoard) -> None:
    port = free_port(socket.SOCK_STREAM)
    sink = cli_sink(board, "--ws", str(port))
    sink.open()
    try:
        assert (sink.host, sink.port, sink.url) == ("127.0.0.1", port, f"http://127.0.0.1:{port}/")
        listening = sink._server.sockets  # noqa: SLF001 - what the kernel was asked for, not what we print
        assert [s.getsockname()[:2] for s in listening] == [("127.0.0.1", port)]
        with client(sink) as ws:
            streams(sink, ws)
    finally:
        sink.close()


@pytest.mark.parametrize("options, environment, token, wrong", [
    (["--token", TOKEN], None, TOKEN, "x"),
    ([], TOKEN, TOKEN, "x"),
    (["--token", "mine"], TOKEN, "mine", TOKEN),  # the option wins over the environment
    ([], "", None, None),  # an empty variable is no token
])
def test_the_token_comes_from_the_option_or_the_environment(
        board: ControlBoard, monkeypatch: pytest.MonkeyPatch, options: list[str], environment: str | None,
        token: str | None, wrong: str | None) -> None:
    if environment is None:
        monkeypatch.delenv(cli.TOKEN_ENV, raising=False)
    else:
        monkeypatch.setenv(cli.TOKEN_ENV, environment)
    sink = cli_sink(board, "--ws", f"127.0.0.1:{free_port(socket.SOCK_STREAM)}", *options)
    sink.open()
    try:
        if token is not None:
            assert refused(sink)[0] == 401
            assert refused(sink, f"?token={quote(wrong)}") == (401, "wrong token\n")
        with client(sink, "" if token is None else f"?token={quote(token)}") as ws:
            streams(sink, ws)
    finally:
        sink.close()


@pytest.mark.parametrize("options, message", [
    (["--token", ""], "--token must be printable ASCII without spaces"),
    (["--token", "two words"], "--token must be printable ASCII without spaces"),
    (["--token", "tëst"], "--token must be printable ASCII without spaces"),
    (["--allow-origin", "localhost:3000"], "--allow-origin 'localhost:3000' is not an origin"),
    (["--allow-origin", "http://localhost:3000/app"], "--allow-origin 'http://localhost:3000/app' is not an origin"),
    (["--allow-origin", "http://[::1"], "--allow-origin 'http://[::1' is not an origin"),
])
def test_bad_security_options_are_user_errors_before_any_socket_opens(board: ControlBoard, options: list[str],
                                                                      message: str) -> None:
    with pytest.raises(UserError, match="^" + re.escape(message)):
        cli_sink(board, "--ws", "8765", *options)


# ---- listening on every interface ----

@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Callable[[int], list[str]]:
    """The messages logged by emotalk_stream at exactly `level`."""
    caplog.set_level(logging.INFO, logger="emotalk_stream")
    return lambda level: [r.getMessage() for r in caplog.records if r.levelno == level]


def test_a_websocket_on_every_interface_without_a_token_warns(open_sink: Callable[..., WebSocketSink],
                                                              records: Callable[[int], list[str]]) -> None:
    sink = open_sink("0.0.0.0")
    assert f"ws 0.0.0.0:{sink.port} {EXPOSED}: anyone on your network can watch and control the stream; use " \
           "--token, or 127.0.0.1 for this machine only" in records(logging.WARNING)


def test_a_websocket_on_every_interface_with_a_token_only_notes_it(open_sink: Callable[..., WebSocketSink],
                                                                   records: Callable[[int], list[str]]) -> None:
    sink = open_sink("0.0.0.0", token=TOKEN)
    assert not records(logging.WARNING)
    assert any(m.startswith(f"ws 0.0.0.0:{sink.port} {EXPOSED}: only clients with the token")
               for m in records(logging.INFO))


def test_a_websocket_on_this_machine_does_not_warn(open_sink: Callable[..., WebSocketSink],
                                                   records: Callable[[int], list[str]]) -> None:
    open_sink("127.0.0.1")
    assert not records(logging.WARNING) and not any(EXPOSED in m for m in records(logging.INFO))


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("127.0.0.1", False)])
def test_osc_control_on_every_interface_warns(board: ControlBoard, records: Callable[[int], list[str]],
                                              host: str, warned: bool) -> None:
    server = OscControlServer(host, 0, board)
    server.open()
    try:
        port = server.address[1]
        expected = (f"osc control 0.0.0.0:{port} {EXPOSED}: OSC has no authentication, so anyone on your "
                    f"network can change the face; use --control 127.0.0.1:{port} for this machine only")
        assert records(logging.WARNING) == ([expected] if warned else [])
    finally:
        server.close()


# ---- the token ----

@pytest.fixture
def guarded(open_sink: Callable[..., WebSocketSink]) -> WebSocketSink:
    return open_sink(token=TOKEN)


@pytest.mark.parametrize("query, headers, reason", [
    ("", {}, TOKEN_REQUIRED),
    ("?token=", {}, TOKEN_REQUIRED),
    ("?token=wrong", {}, "wrong token\n"),
    (f"?token={quote(TOKEN[:-1])}", {}, "wrong token\n"),  # a prefix is not the token
    ("?token=%C3%A9%00", {}, "wrong token\n"),  # not ASCII: refused, not a server error
    ("", {"Authorization": "Bearer wrong"}, "wrong token\n"),
    ("", {"Authorization": "Bearer tëst"}, "wrong token\n"),
    ("", {"Authorization": f"Basic {TOKEN}"}, TOKEN_REQUIRED),
])
def test_a_missing_or_wrong_token_gets_401(guarded: WebSocketSink, query: str, headers: dict[str, str],
                                           reason: str) -> None:
    assert refused(guarded, query, additional_headers=headers) == (401, reason)
    assert guarded.clients == 0


@pytest.mark.parametrize("query, headers", [
    (f"?token={quote(TOKEN)}", {}),
    (f"?other=1&token={quote(TOKEN)}", {}),
    ("", {"Authorization": f"Bearer {TOKEN}"}),
    ("", {"Authorization": f"bearer  {TOKEN}"}),
])
def test_the_right_token_lets_frames_flow(guarded: WebSocketSink, query: str, headers: dict[str, str]) -> None:
    with client(guarded, query, additional_headers=headers) as ws:
        streams(guarded, ws)


def test_a_refused_connection_gets_no_frames_while_others_do(guarded: WebSocketSink) -> None:
    with client(guarded, f"?token={quote(TOKEN)}") as ws:
        streams(guarded, ws)
        with socket.create_connection(("127.0.0.1", guarded.port), timeout=5) as raw:
            raw.sendall(upgrade_request([("Authorization", "Bearer wrong")]))
            answer = raw.recv(65536)
            guarded.submit(OutFrame(1, 1 / 30, 30, pose(jawOpen=0.25)))
            assert '"frame":1' in ws.recv(timeout=5)
            while chunk := raw.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 401 ") and b"WWW-Authenticate: Bearer" in answer
        assert b'"frame"' not in answer and guarded.clients == 1


def test_the_viewer_page_needs_no_token(guarded: WebSocketSink) -> None:
    for path in ("/", f"/?token={quote(TOKEN)}", "/?token=wrong"):
        status, content_type, body = get(guarded.port, path)
        assert (status, content_type) == (200, "text/html; charset=utf-8") and b"<canvas" in body


def test_the_viewer_passes_its_own_token_on_in_chromium(tab: Tab, guarded: WebSocketSink,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="emotalk_stream")
    tab.call("Page.navigate", url=guarded.url)
    wait_for(lambda: "token required" in caplog.text, "the page without a token to be refused", 15)
    assert guarded.clients == 0 and tab.evaluate("window.emotalkViewer.connected") is False
    tab.call("Page.navigate", url=f"{guarded.url}?token={quote(TOKEN)}")
    wait_for(lambda: guarded.clients == 1, "the page with the token to connect", 15)
    guarded.submit(OutFrame(0, 0.0, 30, pose(jawOpen=0.5)))
    tab.wait_until("window.emotalkViewer.frames > 0 && window.emotalkViewer.last.weights.jawOpen === 0.5")
    assert "wrong token" not in caplog.text and tab.exceptions == []


# ---- the origin ----

@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:1", "null",
                                    "https://localhost:3000", "http://localhost:3000.evil.example"])
def test_a_foreign_origin_gets_403(open_sink: Callable[..., WebSocketSink], origin: str) -> None:
    sink = open_sink(allowed_origins=["http://localhost:3000"])
    status, body = refused(sink, origin=origin)
    assert (status, body) == (403, "origin not allowed; start emotalk-stream with --allow-origin ORIGIN\n")
    assert sink.clients == 0


@pytest.mark.parametrize("origin", [None, "SAME", "http://localhost:3000", "HTTP://LOCALHOST:3000"])
def test_no_origin_the_viewers_own_or_an_allowed_one_is_let_in(open_sink: Callable[..., WebSocketSink],
                                                               origin: str | None) -> None:
    sink = open_sink(allowed_origins=["http://localhost:3000/"])
    if origin == "SAME":
        origin = f"http://127.0.0.1:{sink.port}"  # the client's Host header is 127.0.0.1:PORT
    with client(sink, origin=origin) as ws:
        streams(sink, ws)


def test_the_origin_is_checked_before_the_token(guarded: WebSocketSink) -> None:
    assert refused(guarded, f"?token={quote(TOKEN)}", origin="http://evil.example")[0] == 403


@pytest.mark.parametrize("headers", [
    [("Origin", "http://127.0.0.1"), ("Origin", "http://evil.example")],  # every Origin must be allowed
    [("Origin", "http://[::1")],  # unparsable: refused, not a server error
    [("Origin", "http://127.0.0.1"), ("Host", "127.0.0.1")],  # two Hosts: no same-origin
])
def test_odd_origin_headers_get_403(open_sink: Callable[..., WebSocketSink], headers: list[tuple[str, str]]) -> None:
    sink = open_sink()
    assert raw_request(sink.port, upgrade_request(headers)).startswith(b"HTTP/1.1 403 ")


# ---- oversized requests ----

@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
    (b"GET /ws?token=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 100_000 + b"\r\n\r\n", b"431"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(1000)) + b"\r\n", b"431"),
    (upgrade_request([("Authorization", "Bearer " + "z" * 100_000)]), b"431"),
])
def test_an_oversized_request_is_refused_and_the_server_goes_on(open_sink: Callable[..., WebSocketSink],
                                                                request_bytes: bytes, status: bytes) -> None:
    sink = open_sink(token=TOKEN)
    with client(sink, f"?token={quote(TOKEN)}") as before:
        streams(sink, before)
        assert raw_request(sink.port, request_bytes).startswith(b"HTTP/1.1 " + status + b" ")
        assert get(sink.port, "/")[0] == 200
        with client(sink, f"?token={quote(TOKEN)}") as after:
            wait_for(lambda: sink.clients == 2, "the second client to connect")
            sink.submit(OutFrame(5, 5 / 30, 30, pose()))
            assert all('"frame":5' in ws.recv(timeout=5) for ws in (before, after))


# ---- model files ----

class RunsCode:
    """Unpickling this runs a shell command that creates `marker`: what a malicious .pth does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def write_malicious(path: Path, marker: Path, kind: str) -> Path:
    """A checkpoint-looking file whose unpickling would create `marker`."""
    payload = {"epoch": RunsCode(marker), "state_dict": {"bs_map_r.weight": torch.zeros(52, 4)}}
    if kind == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))  # a protocol torch's restricted unpickler parses
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=kind == "zip")
    return path


@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle"])
def test_a_malicious_pickle_is_refused_without_running_code(tmp_path: Path, kind: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    path = write_malicious(tmp_path / "EmoTalk.pth", marker, kind)

    with pytest.raises(UserError) as refusal:
        importer.torch_load_tensors(path)
    assert str(refusal.value) == (f"refusing to unpickle {path}: not a plain state_dict (Trying to load unsupported "
                                  "GLOBAL posix.system whose module posix is blocked); load it only if you trust "
                                  "it, and save its state_dict alone")
    assert not marker.exists()

    capsys.readouterr()
    assert importer.main(["--official", str(path), "--out", str(tmp_path / "out")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [f"emotalk-import: error: {refusal.value}"]
    assert not marker.exists() and not (tmp_path / "out").exists()

    with contextlib.suppress(Exception):  # the control: an unrestricted load does run the code
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_the_bundled_model_is_safetensors_json_and_onnx_only() -> None:
    files = sorted(p.relative_to(DEFAULT_MODEL).as_posix() for p in DEFAULT_MODEL.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts)
    engine = DEFAULT_ENGINE.relative_to(DEFAULT_MODEL).as_posix()
    assert files == [CONFIG_FILE, f"{engine}/{MANIFEST_FILE}", f"{engine}/{ONNX_FILE}", WEIGHTS_FILE]
    assert WEIGHTS_FILE.endswith(".safetensors")


def test_our_checkpoints_load_without_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a checkpoint was unpickled")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(module, name, forbidden)
    assert load_model("default").cfg.blendshapes


@pytest.mark.parametrize("load", [load_model, Engine.load], ids=["load_model", "Engine.load"])
def test_a_pickle_in_place_of_our_weights_is_refused_without_running_code(tmp_path: Path, load: Callable) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copyfile(DEFAULT_MODEL / CONFIG_FILE, folder / CONFIG_FILE)
    write_malicious(folder / WEIGHTS_FILE, marker, "zip")
    with pytest.raises(UserError, match=f"^cannot read {folder / WEIGHTS_FILE}: "):
        load(folder)
    with pytest.raises(UserError, match="is a PyTorch pickle, which is never loaded directly: convert it with "
                                        "`emotalk-import"):
        load(write_malicious(tmp_path / "model.pth", marker, "zip"))
    assert not marker.exists()
