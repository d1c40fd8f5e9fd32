"""WebSocketSink against real peers: websockets clients, raw HTTP requests and headless Chromium."""
from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from emotalk_stream.streamer import websocket_sink
from emotalk_stream.streamer.controls import ControlBoard
from emotalk_stream.streamer.frames import OutFrame, neutral_frame
from emotalk_stream.streamer.head_motion import REST, Motion, Rotation
from emotalk_stream.streamer.websocket_sink import WebSocketSink
from emotalk_stream.training.blendshapes import COUNT, NAMES
from emotalk_stream.training.errors import UserError
from chromium import Tab, decode_png
from waiting import wait_for
from ws_peers import get, pose, stalled_client

VIEWER = Path(__file__).resolve().parents[1] / "streamer" / "viewer" / "index.html"
pytestmark = pytest.mark.usefixtures("time_limit")
HUMAN_SCREENSHOT = Path("/tmp/emotalk-viewer.png")


@pytest.fixture
def sink() -> Iterator[WebSocketSink]:
    ws = WebSocketSink("127.0.0.1", 0)
    ws.open()
    yield ws
    ws.close()






def client(ws: WebSocketSink, **options: object) -> ClientConnection:
    return connect(f"ws://127.0.0.1:{ws.port}/ws", open_timeout=5, close_timeout=1, **options)


def connected(ws: WebSocketSink, count: int) -> None:
    wait_for(lambda: ws.clients == count, f"{count} client(s) to connect")


# ---- frames ----

def test_a_client_gets_every_frame_in_order_then_the_final_one(sink: WebSocketSink) -> None:
    rng = np.random.default_rng(7)
    sent = [OutFrame(i, i / 30, 30, rng.random(COUNT, dtype=np.float32), emotion="happy" if i % 2 else None)
            for i in range(12)]
    with client(sink) as ws:
        connected(sink, 1)
        received = []
        for frame in sent:  # at the pace of a live stream: a burst would overflow the client's queue
            sink.submit(frame)
            received.append(json.loads(ws.recv(timeout=5)))
        sink.close(neutral_frame(len(sent), 30))
        received.append(json.loads(ws.recv(timeout=5)))
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=5)
    assert [m["frame"] for m in received] == list(range(len(sent) + 1))
    for frame, message in zip(sent, received):
        assert set(message) == {"frame", "time", "fps", "weights", "emotion", "final"}
        assert list(message["weights"]) == list(NAMES)
        assert np.allclose([message["weights"][n] for n in NAMES], frame.weights, atol=5e-5, rtol=0)
        assert message["time"] == round(frame.time, 6) and message["fps"] == 30
        assert message["emotion"] == frame.emotion and message["final"] is False
    assert received[-1]["final"] is True and set(received[-1]["weights"].values()) == {0.0}
    assert sink.sent == len(sent) + 1 and sink.drops == 0


def test_frames_with_head_and_eye_motion_carry_their_angles_in_degrees(sink: WebSocketSink) -> None:
    motion = Motion(head=Rotation(pitch=2.71828, yaw=-4.5, roll=1.25), eyes=Rotation(pitch=-3.5, yaw=5.25))
    sent = [OutFrame(0, 0.0, 30, pose(jawOpen=0.5), motion=motion),
            OutFrame(1, 1 / 30, 30, pose(jawOpen=0.5), motion=Motion(head=None, eyes=motion.eyes)),
            OutFrame(2, 2 / 30, 30, pose(jawOpen=0.5))]
    with client(sink) as ws:
        connected(sink, 1)
        received = []
        for frame in sent:
            sink.submit(frame)
            received.append(json.loads(ws.recv(timeout=5)))
        sink.close(neutral_frame(3, 30, Motion(REST, REST)))
        received.append(json.loads(ws.recv(timeout=5)))
    assert received[0]["head"] == {"pitch": 2.718, "yaw": -4.5, "roll": 1.25}
    assert received[0]["eyes"] == received[1]["eyes"] == {"pitch": -3.5, "yaw": 5.25}
    assert received[1]["head"] == {"pitch": 0.0, "yaw": 0.0, "roll": 0.0}, "head motion off: at rest"
    assert "head" not in received[2] and "eyes" not in received[2], "no motion computed: no fields"
    assert received[3]["final"] and received[3]["head"] == {"pitch": 0.0, "yaw": 0.0, "roll": 0.0}
    assert received[3]["eyes"] == {"pitch": 0.0, "yaw": 0.0}


def test_a_stalled_client_loses_old_frames_without_slowing_the_others(sink: WebSocketSink) -> None:
    frames = 1500  # far more than the stalled client's queue and network buffers hold
    small = socket.socket()
    small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small TCP window
    small.connect(("127.0.0.1", sink.port))
    with client(sink, sock=small, max_queue=1), client(sink) as healthy:
        connected(sink, 2)
        handed_over = threading.Semaphore(0)
        sink.on_sent = lambda frame, when: handed_over.release()
        received = []
        for i in range(frames):
            sink.submit(OutFrame(i, i / 30, 30, pose(jawOpen=i % 100 / 100)))
            # one frame at a time through the sink's own queue: every drop counted is a client's
            assert handed_over.acquire(timeout=5), f"frame {i} was not handed to the clients"
            received.append(json.loads(healthy.recv(timeout=5))["frame"])
        assert received == list(range(frames))
        assert sink.drops > 0
        started = time.monotonic()
        sink.close(neutral_frame(frames, 30))
        assert time.monotonic() - started < 3.0
        assert json.loads(healthy.recv(timeout=5))["final"] is True
    assert sink.clients == 0


def reader(ws: ClientConnection, got: list[tuple[float, dict]]) -> threading.Thread:
    """Receive in the background, keeping (arrival time, message) until the connection closes."""
    def run() -> None:
        try:
            for text in ws:
                got.append((time.monotonic(), json.loads(text)))
        except ConnectionClosed:
            pass
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_client_that_stops_reading_is_disconnected_and_the_others_keep_the_rate(
        sink: WebSocketSink, caplog: pytest.LogCaptureFixture) -> None:
    fps, seconds = 30, 6
    got: list[tuple[float, dict]] = []
    with stalled_client(sink.port), client(sink) as healthy:
        connected(sink, 2)
        reader(healthy, got)
        started = time.monotonic()
        stalled_seen = []
        for i in range(fps * seconds):  # a live stream: one frame every 1/30 s
            time.sleep(max(0.0, started + i / fps - time.monotonic()))
            sink.submit(OutFrame(i, i / fps, fps, pose(jawOpen=0.5)))
            stalled_seen.append(sink.clients == 2)
        wait_for(lambda: len(got) == fps * seconds, "every frame at the healthy client")
    assert sink.clients == 0 or not stalled_seen[-1]
    assert "stopped reading" in caplog.text
    while_stalled = [t for (t, m), both in zip(got, stalled_seen) if both]
    assert len(while_stalled) > fps  # the stalled client stayed connected for more than a second
    rate = (len(while_stalled) - 1) / (while_stalled[-1] - while_stalled[0])
    assert abs(rate - fps) < 0.05 * fps, f"{rate:.1f} fps to the healthy client while the other stalled"
    assert [m["frame"] for _, m in got] == list(range(fps * seconds))


def test_lossless_every_reading_client_gets_every_frame_and_a_stalled_one_is_dropped(
        sink: WebSocketSink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(websocket_sink, "LOSSLESS_STALL_S", 1.0)  # the test's patience, not 10 s
    sink.lossless = True  # a file streamed faster than real time
    frames = 600
    got: list[tuple[float, dict]] = []
    with stalled_client(sink.port), client(sink) as healthy:
        connected(sink, 2)
        reader(healthy, got)
        started = time.monotonic()
        for i in range(frames):
            sink.submit(OutFrame(i, i / 30, 30, pose(jawOpen=0.5)))
        wait_for(lambda: len(got) == frames, "every frame at the healthy client", timeout=10)
        assert sink.clients == 1
    assert [m["frame"] for _, m in got] == list(range(frames))
    assert time.monotonic() - started < 8


# ---- controls ----

def exchange(ws: ClientConnection, message: str | bytes) -> dict[str, object]:
    ws.send(message)
    return json.loads(ws.recv(timeout=5))


def test_a_valid_control_is_applied_and_acknowledged(board: ControlBoard) -> None:
    ws_sink = WebSocketSink("127.0.0.1", 0, board=board)
    ws_sink.open()
    try:
        with client(ws_sink) as ws:
            version = board.current[2]
            assert exchange(ws, '{"emotion": "happy:0.5"}') == {"ok": True}
            controls, _, new_version = board.current
            assert controls.emotion == "happy:0.5" and new_version == version + 1
            assert exchange(ws, '{"gain": {"mouth": 1.5}, "blink": false}') == {"ok": True}
            assert board.current[0].gains == {"mouth": 1.5} and board.current[1].blink is False
    finally:
        ws_sink.close()


@pytest.mark.parametrize("message, reason", [
    ("{not json", "not JSON"),
    ("[1, 2]", "JSON object"),
    ('{"volume": 3}', "unknown control"),
    ('{"person": "three"}', "wrong type"),
    ('{"emotion": "' + "x" * 5000 + '"}', "limit is 4096"),
    (b'{"emotion": "happy"}', "not binary"),
])
def test_a_bad_control_gets_an_error_and_the_stream_goes_on(board: ControlBoard, message: str | bytes,
                                                            reason: str) -> None:
    ws_sink = WebSocketSink("127.0.0.1", 0, board=board)
    ws_sink.open()
    try:
        with client(ws_sink) as ws:
            connected(ws_sink, 1)
            before = board.current
            reply = exchange(ws, message)
            assert set(reply) == {"error"} and reason in reply["error"]
            assert board.current == before
            assert exchange(ws, '{"level": 0.25}') == {"ok": True}  # the same connection still works
            ws_sink.submit(OutFrame(0, 0.0, 30, pose(jawOpen=0.5)))
            assert json.loads(ws.recv(timeout=5))["weights"]["jawOpen"] == 0.5
    finally:
        ws_sink.close()


def test_controls_are_refused_when_the_stream_has_no_board(sink: WebSocketSink) -> None:
    with client(sink) as ws:
        assert exchange(ws, '{"emotion": "happy"}') == {"error": "controls are disabled on this stream"}


def test_a_giant_message_closes_only_its_own_client(sink: WebSocketSink) -> None:
    with client(sink) as rude, client(sink) as polite:
        connected(sink, 2)
        rude.send("x" * 200_000)
        with pytest.raises(ConnectionClosed) as closed:
            rude.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big
        connected(sink, 1)
        sink.submit(OutFrame(0, 0.0, 30, pose()))
        assert json.loads(polite.recv(timeout=5))["frame"] == 0


# ---- HTTP ----

def test_the_viewer_page_is_served_self_contained(sink: WebSocketSink) -> None:
    for path in ("/", "/index.html", "/?autoplay=1"):
        status, content_type, body = get(sink.port, path)
        assert (status, content_type) == (200, "text/html; charset=utf-8")
        assert body == VIEWER.read_bytes()
    page = body.decode()
    # the icon inline, then the face and the look it shares with emotalk-serve's page, and its script,
    # from this server (the avatar's modules: tests/test_viewer_avatar.py)
    assert re.findall(r'(?:src|href)="([^"]*)"', page) == ["data:,", "viewer.css", "face.js", "controls.js", "viewer.js"]
    for name, kind in (("face.js", "text/javascript"), ("controls.js", "text/javascript"), ("viewer.css", "text/css"),
                       ("viewer.js", "text/javascript")):
        assert get(sink.port, f"/{name}") == (200, f"{kind}; charset=utf-8", (VIEWER.parent / name).read_bytes())
        page += (VIEWER.parent / name).read_text()
    assert "@import" not in page and "url(" not in page
    assert not re.search(r"https?://", page), "the viewer must not load anything from elsewhere"
    assert "ws://${location.host}/ws" in page


@pytest.mark.parametrize("path", [
    "/nope", "/favicon.ico", "/viewer/index.html", "/index.htm", "/ws/", "/./index.html",
    "/../pyproject.toml", "/%2e%2e/pyproject.toml", "/viewer/../../pyproject.toml", "/..%2f..%2fpyproject.toml",
    "/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "//etc/passwd", "/index.html/../../../pyproject.toml",
    "/..\\pyproject.toml",
])
def test_any_other_path_is_not_found(sink: WebSocketSink, path: str) -> None:
    status, _, body = get(sink.port, path)
    assert status == 404
    assert b"[project]" not in body and b"root:" not in body and b"<html" not in body


def test_a_raw_traversal_request_gets_404(sink: WebSocketSink) -> None:
    with socket.create_connection(("127.0.0.1", sink.port), timeout=5) as raw:
        raw.sendall(b"GET /../../pyproject.toml HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404 ") and b"[project]" not in answer


def test_websocket_upgrades_elsewhere_than_ws_are_refused(sink: WebSocketSink) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{sink.port}/", open_timeout=5)
    assert refused.value.response.status_code == 404


# ---- the port ----

def test_a_port_in_use_is_a_user_error_and_a_closed_sink_frees_its_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"--ws 127.0.0.1:{port}: port {port} is in use; choose another port"):
            WebSocketSink("127.0.0.1", port).open()
    first = WebSocketSink("127.0.0.1", 0)
    first.open()
    port = first.port
    with client(first) as ws:
        connected(first, 1)
        first.close(neutral_frame(0, 30))
        assert json.loads(ws.recv(timeout=5))["final"] is True
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    again = WebSocketSink("127.0.0.1", port)
    again.open()
    try:
        assert again.port == port and again.url == f"http://127.0.0.1:{port}/"
        assert get(again.port, "/")[0] == 200
    finally:
        again.close()


def test_an_address_of_another_machine_is_a_user_error() -> None:
    with pytest.raises(UserError, match="--ws 192.0.2.1:0: cannot listen on '192.0.2.1'"):
        WebSocketSink("192.0.2.1", 0).open()  # TEST-NET-1: never an address of this machine


# ---- headless Chromium ----

class PoseStream:
    """Frames of the current pose at 60 fps from a thread, as the live streamer sends them."""

    def __init__(self, ws: WebSocketSink):
        self._sink = ws
        self._pose = pose()
        self._index = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PoseStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def show(self, weights: np.ndarray) -> int:
        """Stream `weights` from now on; returns the index of the first frame showing them."""
        with self._lock:
            self._pose = weights
            return self._index

    def _run(self) -> None:
        while not self._stop.wait(1 / 60):
            with self._lock:
                frame = OutFrame(self._index, self._index / 60, 60, self._pose, emotion="happy")
                self._index += 1
            self._sink.submit(frame)


def test_the_viewer_draws_the_streamed_face_in_chromium(tab: Tab, board: ControlBoard, tmp_path: Path) -> None:
    ws_sink = WebSocketSink("127.0.0.1", 0, board=board)
    ws_sink.open()
    try:
        with PoseStream(ws_sink) as stream:
            tab.call("Page.navigate", url=ws_sink.url)
            tab.wait_until("window.emotalkViewer && window.emotalkViewer.frames > 0")
            shots = {}
            for name, weights in (("rest", pose()),
                                  ("open", pose(jawOpen=1, eyeBlinkLeft=1, eyeBlinkRight=1))):
                first = stream.show(weights)
                tab.wait_until(f"window.emotalkViewer.drawn >= {first}")
                shots[name] = tab.screenshot()
                (tmp_path / f"viewer-{name}.png").write_bytes(shots[name])
            shutil.copyfile(tmp_path / "viewer-open.png", HUMAN_SCREENSHOT)

            assert tab.evaluate("document.querySelectorAll('.bar').length") == COUNT
            assert tab.evaluate("document.getElementById('connection').textContent") == "connected"
            # the emotion in effect: the model's calm default, not the voice's "happy" (tests/test_viewer_avatar.py)
            assert tab.evaluate("document.getElementById('emotion-now').textContent") == "calm"
            assert tab.evaluate("window.emotalkViewer.last.weights.jawOpen") == 1

            # the control panel sends over the same socket and shows the reply
            tab.evaluate("(() => { const e = document.getElementById('emotion'); e.value = 'sad';"
                         "e.dispatchEvent(new Event('change')); })()")
            tab.wait_until("document.getElementById('reply').textContent.endsWith('→ ok')")
            assert board.current[0].emotion == "sad:1.00"

            box = tab.evaluate("(({x, y, width, height}) => [x, y, width, height])"
                               "(document.getElementById('face').getBoundingClientRect())")
        x, y, width, height = (round(v) for v in box)
        rest, open_ = (decode_png(shots[n]).astype(int) for n in ("rest", "open"))
        assert tuple(rest[-5, 5, :3]) == (0x14, 0x17, 0x1C)  # the page background: decoding is right
        # Chromium's two encoders use different row filters (the quick one: Up; the small one: all five)
        eye = {"x": x + 200, "y": y + 160, "width": 100, "height": 60}
        quick, small = (decode_png(tab.screenshot(fast=fast, **eye)) for fast in (True, False))
        assert quick.shape == (60, 100, 3) and np.array_equal(quick, small)
        changed = np.abs(rest - open_)[y:y + height, x:x + width, :3].max(axis=2) > 40
        eyes, mouth = changed[150:230].mean(), changed[270:410].mean()
        assert eyes > 0.02 and mouth > 0.05, f"face barely moved: eyes {eyes:.3f}, mouth {mouth:.3f}"

        # the page reconnects when the stream restarts on the same port
        port = ws_sink.port
        ws_sink.close(neutral_frame(10_000, 60))
        tab.wait_until("!window.emotalkViewer.connected && window.emotalkViewer.last.final")
        ws_sink = WebSocketSink("127.0.0.1", port, board=board)
        ws_sink.open()
        connected(ws_sink, 1)
        ws_sink.submit(OutFrame(0, 0.0, 60, pose(jawOpen=0.3)))
        tab.wait_until("window.emotalkViewer.connected && window.emotalkViewer.drawn === 0")
        assert tab.exceptions == []
    finally:
        ws_sink.close()
