"""emotalk-serve's live demo page in real headless Chromium against a real `emotalk-serve`: the
browser's microphone is a file of real speech (Chromium's fake capture device), 127.0.0.1 is a
secure context, and `demo.test` (mapped to 127.0.0.1 in the browser) is another machine's name."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from websockets.sync.client import connect

from chromium import CHROMIUM, Tab, decode_png, open_tab
from emotalk_stream.serve import page
from emotalk_stream.training.blendshapes import REGIONS
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "training" / "assets" / "sample.wav"  # 16 kHz s16 mono: Chromium's fake device takes it as is
TOKEN = "demo-token"
OTHER_HOST = "demo.test"
MICROPHONE = ("--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={SPEECH}")
BROWSER_FLAGS = (*MICROPHONE, "--use-fake-ui-for-media-stream", f"--host-resolver-rules=MAP {OTHER_HOST} 127.0.0.1",
                 "--ignore-certificate-errors")
# Before the page's own scripts: every Content-Security-Policy violation, for the test to read.
WATCH_CSP = ("window.cspViolations = []; document.addEventListener('securitypolicyviolation', "
             "(e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));")
HUMAN_SCREENSHOT = Path("/tmp/emotalk-serve-page.png")
pytestmark = pytest.mark.usefixtures("time_limit")


@dataclass
class Served:
    """A running `emotalk-serve`: its page's URL and everything it has printed so far."""

    process: subprocess.Popen
    url: str = ""
    output: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].strip("/"))

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}stats?token={TOKEN}", timeout=5) as response:
            return json.load(response)


def start_serve(*args: str) -> Served:
    """`emotalk-serve` on a free port, its output read all along (a full pipe would stall it)."""
    served = Served(subprocess.Popen([sys.executable, "-m", "emotalk_stream.serve.cli", "--port", "0", "--no-grpc",
                                      "--token", TOKEN, *args], stderr=subprocess.PIPE, text=True))
    threading.Thread(target=lambda: served.output.extend(served.process.stderr), daemon=True).start()
    wait_for(lambda: any("page at" in line for line in served.output) or served.process.poll() is not None,
             "emotalk-serve to start", 30)
    found = re.search(r"page at (https?://\S+/),", "".join(served.output))
    assert found, "".join(served.output)
    served.url = found.group(1)
    return served


def stop_serve(served: Served) -> None:
    served.process.kill()
    served.process.wait(10)


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    """One session at most, so that a second one is refused as `server full`."""
    served = start_serve("--max-streams", "1")
    yield served
    stop_serve(served)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tab]:
    if not CHROMIUM.exists():
        pytest.skip(f"the page tests drive headless Chromium, and {CHROMIUM} is not installed")
    with open_tab(tmp_path_factory.mktemp("chromium"), *BROWSER_FLAGS) as tab:
        tab.call("Page.enable")
        tab.call("Page.addScriptToEvaluateOnNewDocument", source=WATCH_CSP)
        yield tab


def open_page(tab: Tab, url: str) -> None:
    tab.exceptions.clear()
    tab.call("Page.navigate", url=url)
    tab.wait_until("window.emotalkDemo !== undefined && document.readyState === 'complete'")


def click(tab: Tab, element: str) -> None:
    """A real mouse click on the element: browsers start audio only on a user's gesture."""
    x, y = tab.evaluate(f"(({{x, y, width, height}}) => [x + width / 2, y + height / 2])"
                        f"(document.getElementById('{element}').getBoundingClientRect())")
    for kind in ("mousePressed", "mouseReleased"):
        tab.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)


def set_control(tab: Tab, element: str, value: object) -> None:
    """What a user's hand does to an input: a new value, then its input and change events."""
    tab.evaluate(f"(() => {{ const e = document.getElementById('{element}'); e.value = {json.dumps(value)};"
                 f"e.dispatchEvent(new Event('input')); e.dispatchEvent(new Event('change')); }})()")


def shown(tab: Tab) -> tuple[str, str]:
    """The page's state and its message."""
    return tab.evaluate("[emotalkDemo.state, document.getElementById('message').textContent]")


def face(tab: Tab) -> np.ndarray:
    """The face canvas's pixels."""
    x, y, width, height = tab.evaluate("(({x, y, width, height}) => [x, y, width, height])"
                                       "(document.getElementById('face').getBoundingClientRect())")
    return decode_png(tab.screenshot(x=x, y=y, width=width, height=height)).astype(int)


def samples(tab: Tab, expression: str, seconds: float) -> list:
    values, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        values.append(tab.evaluate(expression))
        time.sleep(0.03)
    return values


def fetch(served: Served, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET `path` (no token): status, headers, body."""
    try:
        with urllib.request.urlopen(f"{served.url}{path[1:]}", timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_the_page_and_everything_it_loads_come_from_the_server(server: Served) -> None:
    status, headers, html = fetch(server, "/")  # the page itself needs no token
    assert (status, headers["Content-Type"], headers["Content-Security-Policy"]) == (
        200, "text/html; charset=utf-8", page.CSP)
    loads = re.findall(r'(?:src|href)="([^"]*)"', html.decode())
    assert loads == ["data:,", "/viewer.css", "/demo.css", "/face.js", "/controls.js", "/demo.js"]
    served = {path: fetch(server, path) for path in [*loads[1:], "/capture.js"]}  # the worklet: demo.js loads it
    assert {path: (status, headers["Content-Type"]) for path, (status, headers, _) in served.items()} == {
        "/viewer.css": (200, "text/css; charset=utf-8"), "/demo.css": (200, "text/css; charset=utf-8"),
        "/face.js": (200, "text/javascript; charset=utf-8"),
        "/controls.js": (200, "text/javascript; charset=utf-8"), "/demo.js": (200, "text/javascript; charset=utf-8"),
        "/capture.js": (200, "text/javascript; charset=utf-8")}
    assert set(page.FILES) == {"/", *served}  # nothing served that the page does not use
    # one face for both servers: the stream viewer's very file
    assert served["/face.js"][2] == (ROOT / "streamer" / "viewer" / "face.js").read_bytes()
    for path in ("/demo.html", "/static/demo.js", "/viewer/face.js", "/index.html", "/%2e%2e/serve/page.py"):
        assert fetch(server, path)[0] == 404, path


def test_the_page_streams_the_microphone_and_draws_the_face_with_live_controls(
        browser: Tab, server: Served, tmp_path: Path) -> None:
    open_page(browser, f"{server.url}?token={TOKEN}")
    regions = browser.evaluate("[...document.querySelectorAll('[data-region]')].map((e) => e.dataset.region)")
    assert regions == list(REGIONS)  # the gain sliders: the engine's face regions
    rest = face(browser)
    click(browser, "start")
    browser.wait_until("emotalkDemo.state === 'live' && emotalkDemo.frames > 15", 20)
    assert server.stats()["sessions"] == 1
    # nothing chosen on the page: the session runs the server's defaults (a calm face whose level
    # follows the voice, docs/results.md#real-voices), and the form shows them
    shown = browser.evaluate("[document.getElementById('emotion').value, document.getElementById('level-voice').checked]")
    assert shown == ["calm", True] and browser.evaluate("document.getElementById('emotion-set').textContent") == "calm"

    # frames keep coming at the stream's rate, and the jaw moves with the speech
    before, start = browser.evaluate("emotalkDemo.frames"), time.monotonic()
    jaw = samples(browser, "emotalkDemo.drawn.weights.jawOpen", 2.0)
    rate = (browser.evaluate("emotalkDemo.frames") - before) / (time.monotonic() - start)
    assert rate > 20, f"{rate:.1f} frames/s"
    assert max(jaw) - min(jaw) > 0.2 and len(set(jaw)) > 10, jaw
    speaking = [face(browser) for _ in range(6)]
    (tmp_path / "live.png").write_bytes(browser.screenshot(fast=False))
    shutil.copyfile(tmp_path / "live.png", HUMAN_SCREENSHOT)
    latency, fps = browser.evaluate("['latency', 'fps'].map((id) => Number(document.getElementById(id).textContent))")
    assert 0 < latency < 1000 and 20 <= fps <= 40

    # a control on the page reaches the server: no jaw and no mouth in the frames that follow
    set_control(browser, "gain-jaw", 0)
    set_control(browser, "gain-mouth", 0)
    changed = browser.evaluate("emotalkDemo.frames")
    browser.wait_until(f"emotalkDemo.frames > {changed + 15}")
    moving = samples(browser, "Object.entries(emotalkDemo.last.weights).filter(([name, value]) => "
                              "/^(jaw|mouth)/.test(name) && value !== 0).length", 1.0)
    assert set(moving) == {0}
    assert any("gain={'jaw': 0}" in line for line in server.output)
    set_control(browser, "emotion", "happy")
    set_control(browser, "gain-jaw", 1)
    browser.wait_until("emotalkDemo.last.weights.jawOpen > 0.1", 5)
    assert any("emotion=happy:1.00" in line for line in server.output)
    assert browser.evaluate("document.getElementById('emotion-set').textContent") == "happy:1.00"

    # Stop: end of input, every remaining frame, the final one drawn: the face at rest
    click(browser, "stop")
    browser.wait_until("emotalkDemo.state === 'ended' && emotalkDemo.drawn.final", 10)
    final = browser.evaluate("emotalkDemo.drawn")
    assert not any(final["weights"].values())
    assert browser.evaluate("emotalkDemo.frames") == final["frame"] + 1  # none lost
    browser.wait_until("document.getElementById('frame').textContent.endsWith('(end)')")
    assert np.array_equal(face(browser), rest)
    moved = max((np.abs(shot - rest)[250:420, 100:260, :3].max(axis=2) > 40).mean() for shot in speaking)
    assert moved > 0.02, f"the mouth barely moved: {moved:.3f} of its pixels"
    wait_for(lambda: server.stats()["sessions"] == 0, "the session to close")

    assert browser.exceptions == [] and browser.evaluate("window.cspViolations") == []
    origin = server.url.rstrip("/")
    assert all(url.startswith(origin) for url in browser.evaluate(
        "performance.getEntriesByType('resource').map((entry) => entry.name)"))


def test_the_page_says_why_it_cannot_stream(browser: Tab, server: Served, tmp_path: Path) -> None:
    # another machine's name over http: no microphone, and how to get one
    open_page(browser, f"http://{OTHER_HOST}:{server.port}/?token={TOKEN}")
    click(browser, "start")
    state, message = shown(browser)
    assert state == "no microphone" and "https://" in message and "--tls-cert FILE --tls-key FILE" in message

    for query, reason in (("?token=wrong", "(wrong token)"), ("", "(token required: ")):
        open_page(browser, f"{server.url}{query}")
        click(browser, "start")
        browser.wait_until("emotalkDemo.state === 'refused'")
        state, message = shown(browser)
        assert reason in message and f"{server.url}?token=TOKEN" in message

    with connect(f"ws://127.0.0.1:{server.port}/v1/stream?token={TOKEN}", open_timeout=5) as holder:
        holder.send(json.dumps({"type": "hello", "sample_rate": 16000}))
        assert json.loads(holder.recv(timeout=5))["type"] == "ready"
        open_page(browser, f"{server.url}?token={TOKEN}")
        click(browser, "start")
        browser.wait_until("emotalkDemo.state === 'server full'", 10)
        assert shown(browser)[1] == "The server is full: server full (1 of 1 sessions): try again later"
        holder.send(json.dumps({"type": "end"}))
        assert json.loads(list(holder)[-1])["final"]
    assert browser.exceptions == []

    with open_tab(tmp_path, *MICROPHONE, "--use-fake-ui-for-media-stream=deny") as refusing:
        open_page(refusing, f"{server.url}?token={TOKEN}")
        click(refusing, "start")
        refusing.wait_until("emotalkDemo.state === 'no microphone'")
        assert shown(refusing)[1].startswith("Microphone access was refused. Allow it for this site")
        assert refusing.exceptions == []


def test_over_tls_from_another_machine_until_the_connection_is_lost(browser: Tab, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"  # as docs/serving.md makes them
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                    "-out", str(cert), "-subj", f"/CN={OTHER_HOST}", "-addext", f"subjectAltName=DNS:{OTHER_HOST}"],
                   check=True, capture_output=True)
    served = start_serve("--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert served.url.startswith("https://")
        open_page(browser, f"https://{OTHER_HOST}:{served.port}/?token={TOKEN}")
        assert browser.evaluate("window.isSecureContext")
        click(browser, "start")
        browser.wait_until("emotalkDemo.state === 'live' && emotalkDemo.frames > 15", 20)
        served.process.send_signal(signal.SIGKILL)
        browser.wait_until("emotalkDemo.state === 'lost'", 10)
        assert shown(browser)[1].startswith("Connection lost")
        assert browser.exceptions == []
    finally:
        stop_serve(served)
