"""The stream viewer's avatar, audio, OBS mode and live controls, in real headless Chromium against a
real WebSocketSink (and once against `emotalk-stream` itself). The VRM models are built by the tests
(tests/vrm_models.py), the frames are the bundled model's on real speech, and the screenshots are
compared pixel by pixel."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import numpy as np
import pytest
import soundfile as sf

from chromium import CHROMIUM, Tab, decode_png, open_tab
from emotalk_stream.engine import Engine
from emotalk_stream.streamer import websocket_sink
from emotalk_stream.streamer.controls import ControlBoard
from emotalk_stream.streamer.frames import OutFrame, neutral_frame
from emotalk_stream.streamer.head_motion import Motion, Rotation
from emotalk_stream.streamer.websocket_sink import PAGES, WebSocketSink
from emotalk_stream.training.blendshapes import INDEX, NAMES, REGIONS, VRM0_FROM_ARKIT, VRM1_NAMES
from vrm_models import LEFT_EYE_SHUT, MOUTH_OPEN, MOUTH_ROUND, RIGHT_EYE_SHUT, vrm
from waiting import free_port, wait_for
from ws_peers import get, pose

ROOT = Path(__file__).resolve().parents[1]
VIEWER = ROOT / "streamer" / "viewer"
SAMPLE = ROOT / "training" / "assets" / "sample.wav"
CLI = [sys.executable, "-m", "emotalk_stream.streamer.cli"]
FPS = 30
LIVE_DELAY_S = 0.25  # viewer.js
ISSUE_PRESETS = {"aa", "ih", "ou", "ee", "oh", "blink", "happy", "angry", "sad", "relaxed", "surprised"}
# A presets model: the issue's presets, and one ARKit-named custom expression, which such a model leaves alone.
PRESETS_1 = {"aa": [(MOUTH_OPEN, 1.0)], "ih": [(MOUTH_OPEN, 0.3)], "ou": [(MOUTH_ROUND, 0.6)],
             "ee": [(MOUTH_OPEN, 0.3)], "oh": [(MOUTH_ROUND, 1.0)], "blink": [(LEFT_EYE_SHUT, 1.0), (RIGHT_EYE_SHUT, 1.0)],
             "happy": [], "angry": [], "sad": [], "relaxed": [], "surprised": [], "jawOpen": [(MOUTH_OPEN, 1.0)]}
# A perfect-sync model: the 52 ARKit names, spelt PascalCase and lower case in turn, and two presets.
ARKIT_BINDS = {"jawOpen": [(MOUTH_OPEN, 1.0)], "eyeBlinkLeft": [(LEFT_EYE_SHUT, 1.0)],
               "eyeBlinkRight": [(RIGHT_EYE_SHUT, 1.0)], "mouthFunnel": [(MOUTH_ROUND, 1.0)]}
SPELLING = {name: name[0].upper() + name[1:] if i % 2 else name.lower() for i, name in enumerate(NAMES)}
PERFECT_SYNC = {**{SPELLING[name]: ARKIT_BINDS.get(name, []) for name in NAMES},
                "aa": [(MOUTH_OPEN, 1.0)], "blink": [(LEFT_EYE_SHUT, 1.0), (RIGHT_EYE_SHUT, 1.0)]}
# A VRM 0.x model with sided blinks (then "blink" is left alone).
PRESETS_0 = {"a": [(MOUTH_OPEN, 1.0)], "o": [(MOUTH_ROUND, 1.0)], "blink": [(LEFT_EYE_SHUT, 1.0), (RIGHT_EYE_SHUT, 1.0)],
             "blink_l": [(LEFT_EYE_SHUT, 1.0)], "blink_r": [(RIGHT_EYE_SHUT, 1.0)], "joy": [], "sorrow": []}
# Before the page's own scripts: every Content-Security-Policy violation, for the test to read.
WATCH_CSP = ("window.cspViolations = []; document.addEventListener('securitypolicyviolation', "
             "(e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));")
HUMAN_SCREENSHOT = Path("/tmp/emotalk-viewer-avatar.png")
pytestmark = pytest.mark.usefixtures("time_limit")


class Speech:
    """The bundled model's frames of the voice clip: all of them, the quietest and the loudest."""

    def __init__(self, weights: np.ndarray):
        self.weights = weights
        jaw = weights[:, INDEX["jawOpen"]]
        self.silent, self.loud = weights[int(jaw.argmin())], weights[int(jaw.argmax())]


@pytest.fixture(scope="module")
def speech(engine: Engine) -> Speech:
    clip, rate = sf.read(SAMPLE, dtype="float32")
    assert rate == engine.sample_rate
    return Speech(engine.process([clip])[0])


@contextlib.contextmanager
def viewer(tab: Tab, query: str = "", **options: object) -> Iterator[WebSocketSink]:
    """A WebSocketSink with `options`, and the viewer page (with `query`) connected to it."""
    sink = WebSocketSink("127.0.0.1", 0, **options)
    sink.open()
    try:
        tab.exceptions.clear()
        tab.call("Page.navigate", url=sink.url + query)
        wait_for(lambda: sink.clients == 1, "the page to connect", 15)
        yield sink
    finally:
        sink.close()


def show(tab: Tab, sink: WebSocketSink, index: int, weights: np.ndarray, emotion: str | None = None) -> None:
    """Send frame `index` and wait until the page has drawn it."""
    sink.submit(OutFrame(index, index / FPS, FPS, weights, emotion=emotion))
    tab.wait_until(f"window.emotalkViewer.drawn === {index}")


def pixels(tab: Tab, element: str) -> np.ndarray:
    """The element's pixels on screen."""
    x, y, width, height = tab.evaluate(f"(({{x, y, width, height}}) => [x, y, width, height])"
                                       f"(document.getElementById('{element}').getBoundingClientRect())")
    return decode_png(tab.screenshot(x=x, y=y, width=width, height=height)).astype(int)


def changed(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """The share of pixels that changed clearly, in the upper half (eyes) and the lower half (mouth)."""
    moved = np.abs(before - after)[..., :3].max(axis=2) > 40
    half = len(moved) // 2
    return float(moved[:half].mean()), float(moved[half:].mean())


def mixed(table: dict[str, dict[str, float]], weights: np.ndarray) -> dict[str, float]:
    """Each preset's weight from the ARKit weights as the page gets them (4 decimals)."""
    sent = np.round(weights.astype(np.float64), 4)
    return {preset: float(np.clip(sum(sent[INDEX[name]] * factor for name, factor in mix.items()), 0, 1))
            for preset, mix in table.items()}


def avatar_module(tab: Tab) -> dict:
    """avatar.js's ARKIT names and PRESETS_FROM_ARKIT table, as the page imports them."""
    result = tab.call("Runtime.evaluate", awaitPromise=True, returnByValue=True, expression=(
        "import('./avatar.js').then((m) => ({arkit: m.ARKIT, presets: m.PRESETS_FROM_ARKIT}))"))
    return result["result"]["value"]


def click(tab: Tab, element: str) -> None:
    """A real mouse click: browsers start audio only on a user's gesture."""
    x, y = tab.evaluate(f"(({{x, y, width, height}}) => [x + width / 2, y + height / 2])"
                        f"(document.getElementById('{element}').getBoundingClientRect())")
    for kind in ("mousePressed", "mouseReleased"):
        tab.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)


def drop(tab: Tab, path: Path) -> None:
    """Drag the file `path` onto the face and drop it there, as a user does from a file manager."""
    x, y = tab.evaluate("(({x, y, width, height}) => [x + width / 2, y + height / 2])"
                        "(document.getElementById('stage').getBoundingClientRect())")
    data = {"items": [], "files": [str(path)], "dragOperationsMask": 1}
    for kind in ("dragEnter", "dragOver", "drop"):
        tab.call("Input.dispatchDragEvent", type=kind, x=x, y=y, data=data)


def avatar_loaded(tab: Tab) -> dict:
    tab.wait_until("window.emotalkViewer && window.emotalkViewer.avatar !== null", 30)
    return tab.evaluate("emotalkViewer.avatar")


# ---- the model's expressions ----

def test_a_vrm_1_model_from_avatar_gets_the_presets_mixed_from_the_weights(tab: Tab, speech: Speech,
                                                                            tmp_path: Path) -> None:
    model = tmp_path / "presets.vrm"
    model.write_bytes(vrm("1.0", PRESETS_1))
    with viewer(tab, avatar=str(model)) as sink:
        info = avatar_loaded(tab)
        assert (info["format"], info["mode"]) == ("VRM 1.0", "presets")
        assert set(info["driven"]) == ISSUE_PRESETS
        table = avatar_module(tab)
        assert table["arkit"] == list(NAMES)
        # the VMC output's mixes, and the page's two more
        assert {VRM1_NAMES[preset]: mix for preset, mix in VRM0_FROM_ARKIT.items()} == {
            name: table["presets"][name] for name in VRM1_NAMES.values()}
        assert set(table["presets"]) - set(VRM1_NAMES.values()) == {"blink", "surprised"}

        poses = {"silent": speech.silent, "loud": speech.loud, "blink": pose(eyeBlinkLeft=1, eyeBlinkRight=1),
                 "smile": pose(mouthSmileLeft=0.8, mouthSmileRight=0.6, browInnerUp=0.4, eyeWideLeft=1)}
        shots, values = {}, {}
        for index, (name, weights) in enumerate(poses.items()):
            show(tab, sink, index, weights)
            values[name] = tab.evaluate("emotalkViewer.avatar.values")
            shots[name] = pixels(tab, "avatar")
            if name == "loud":
                HUMAN_SCREENSHOT.write_bytes(tab.screenshot())
        assert tab.exceptions == []

    for name, weights in poses.items():
        expected = {preset: value for preset, value in mixed(table["presets"], weights).items() if preset in ISSUE_PRESETS}
        assert values[name] == pytest.approx({**expected, "jawOpen": 0.0}, abs=1e-4), name
    assert values["loud"]["aa"] > 0.2 and values["silent"]["aa"] < 0.01  # the loudest frame's jaw: about 0.3
    assert values["blink"]["blink"] == 1.0 and values["smile"]["happy"] == pytest.approx(0.7, abs=1e-4)
    eyes, mouth = changed(shots["silent"], shots["loud"])
    assert mouth > 0.01 and eyes < 0.002, f"speech should open the mouth: eyes {eyes:.4f}, mouth {mouth:.4f}"
    eyes, mouth = changed(shots["silent"], shots["blink"])
    assert eyes > 0.002 and mouth < 0.002, f"a blink should shut the eyes: eyes {eyes:.4f}, mouth {mouth:.4f}"


def test_a_perfect_sync_model_dropped_on_the_page_gets_the_52_weights_by_name(tab: Tab, speech: Speech,
                                                                              tmp_path: Path) -> None:
    model, broken = tmp_path / "perfect-sync.vrm", tmp_path / "broken.vrm"
    model.write_bytes(vrm("1.0", PERFECT_SYNC))
    broken.write_bytes(b"not a model at all")
    with viewer(tab) as sink:
        show(tab, sink, 0, speech.silent)
        drop(tab, broken)
        tab.wait_until("document.getElementById('avatar-state').className === 'error'")
        assert "broken.vrm cannot be shown" in tab.evaluate("document.getElementById('avatar-state').textContent")
        assert tab.evaluate("[emotalkViewer.avatar, document.getElementById('face').hidden]") == [None, False]

        drop(tab, model)
        info = avatar_loaded(tab)
        assert (info["format"], info["mode"]) == ("VRM 1.0", "perfect-sync")
        assert sorted(info["driven"]) == sorted(SPELLING.values())  # each as the model spells it; no presets
        shots, values = {}, {}
        for index, (name, weights) in enumerate((("silent", speech.silent), ("loud", speech.loud)), start=1):
            show(tab, sink, index, weights)
            values[name] = tab.evaluate("emotalkViewer.avatar.values")
            shots[name] = pixels(tab, "avatar")
        assert tab.evaluate("document.getElementById('face').hidden") is True

        click(tab, "avatar-off")  # back to the drawn face
        tab.wait_until("emotalkViewer.avatar === null && !document.getElementById('face').hidden")
        assert tab.exceptions == []
    sent = np.round(speech.loud.astype(np.float64), 4)
    assert values["loud"] == pytest.approx({**{SPELLING[name]: sent[INDEX[name]] for name in NAMES},
                                            "aa": 0.0, "blink": 0.0}, abs=1e-4)
    eyes, mouth = changed(shots["silent"], shots["loud"])
    assert mouth > 0.01, f"jawOpen should open the mouth: {mouth:.4f}"


def test_a_vrm_0_model_faces_the_camera_and_gets_its_presets(tab: Tab, speech: Speech, tmp_path: Path) -> None:
    model = tmp_path / "old.vrm"
    model.write_bytes(vrm("0.x", PRESETS_0))
    with viewer(tab, avatar=str(model)) as sink:
        info = avatar_loaded(tab)
        assert (info["format"], info["mode"]) == ("VRM 0.x", "presets")
        # three-vrm names 0.x presets as 1.0 does (a -> aa, blink_l -> blinkLeft, joy -> happy, sorrow -> sad);
        # with blinkLeft and blinkRight, blink is left alone
        assert set(info["driven"]) == {"aa", "oh", "blinkLeft", "blinkRight", "happy", "sad"}
        shots, values = {}, {}
        for index, (name, weights) in enumerate((("silent", speech.silent), ("loud", speech.loud),
                                                 ("wink", pose(eyeBlinkLeft=1)))):
            show(tab, sink, index, weights)
            values[name] = tab.evaluate("emotalkViewer.avatar.values")
            shots[name] = pixels(tab, "avatar")
    assert values["wink"] == pytest.approx({"aa": 0, "oh": 0, "blink": 0, "blinkLeft": 1, "blinkRight": 0,
                                            "happy": 0, "sad": 0})
    assert values["loud"]["aa"] == pytest.approx(round(float(speech.loud[INDEX["jawOpen"]]), 4), abs=1e-4)
    # turned to face the camera: the mouth in front of the skin opens, the left eye shuts
    assert changed(shots["silent"], shots["loud"])[1] > 0.01
    assert changed(shots["silent"], shots["wink"])[0] > 0.001


def alpha_centre(tab: Tab) -> np.ndarray:
    """(row, column) of the middle of everything opaque on a transparent page."""
    rows, columns = np.nonzero(decode_png(tab.screenshot())[..., 3] == 255)
    return np.array([rows.mean(), columns.mean()])


@pytest.mark.parametrize("version, expressions", [("1.0", PRESETS_1), ("0.x", PRESETS_0)], ids=["VRM 1.0", "VRM 0.x"])
def test_the_frames_head_angles_turn_the_avatars_head(tab: Tab, tmp_path: Path, version: str,
                                                       expressions: dict) -> None:
    model = tmp_path / "face.vrm"
    model.write_bytes(vrm(version, expressions))
    tab.call("Emulation.setDefaultBackgroundColorOverride", color={"r": 0, "g": 0, "b": 0, "a": 0})
    turns = {"rest": Rotation(), "down": Rotation(pitch=20), "left": Rotation(yaw=20)}
    with viewer(tab, "?mode=obs", avatar=str(model)) as sink:
        avatar_loaded(tab)
        centres, poses = {}, {}
        for index, (name, head) in enumerate(turns.items()):
            sink.submit(OutFrame(index, index / FPS, FPS, pose(), motion=Motion(head, Rotation(pitch=5, yaw=-8))))
            tab.wait_until(f"window.emotalkViewer.drawn === {index}")
            centres[name], poses[name] = alpha_centre(tab), tab.evaluate("emotalkViewer.avatar.head")
        eyes = tab.evaluate("emotalkViewer.avatar.eyes")  # given to three-vrm's look-at
    for name, head in turns.items():
        assert poses[name] == pytest.approx({"pitch": head.pitch, "yaw": head.yaw, "roll": head.roll}, abs=1e-6)
    # pitch > 0 looks down: the face moves down the picture; yaw > 0 turns it to its own left, the viewer's right
    assert eyes == pytest.approx({"pitch": 5, "yaw": -8})
    down, left = centres["down"] - centres["rest"], centres["left"] - centres["rest"]
    assert down[0] > 10 and abs(down[1]) < 3, down
    assert left[1] > 10 and abs(left[0]) < 6, left


# ---- OBS ----

@pytest.mark.parametrize("with_avatar", [True, False], ids=["avatar", "drawn face"])
def test_obs_mode_shows_the_face_alone_on_a_transparent_background(tab: Tab, tmp_path: Path,
                                                                   with_avatar: bool) -> None:
    model = tmp_path / "presets.vrm"
    model.write_bytes(vrm("1.0", PRESETS_1))
    tab.call("Emulation.setDefaultBackgroundColorOverride", color={"r": 0, "g": 0, "b": 0, "a": 0})
    with viewer(tab, "?mode=obs", avatar=str(model) if with_avatar else None) as sink:
        if with_avatar:
            avatar_loaded(tab)
        show(tab, sink, 0, pose(jawOpen=0.5))
        hidden = tab.evaluate("[...document.querySelectorAll('header, .column, .avatar-bar')]"
                              ".map((e) => getComputedStyle(e).display)")
        shot = decode_png(tab.screenshot())
    assert hidden == ["none"] * 3
    assert shot.shape == (800, 1280, 4), "a transparent page gives a PNG with alpha"
    alpha = shot[..., 3]
    assert alpha[:80, :80].max() == 0 and alpha[-80:, -80:].max() == 0, "the corners must be transparent"
    assert alpha[400, 640] == 255, "the face, in the middle, is opaque"
    opaque = float((alpha == 255).mean())
    assert 0.05 < opaque < 0.8, f"{opaque:.2f} of the picture is opaque"


def test_obs_mode_plays_the_sound_without_a_click_where_the_browser_allows_it(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"the viewer tests drive headless Chromium, and {CHROMIUM} is not installed")
    # OBS's browser source lets pages play sound by themselves; so does Chromium with this flag
    with open_tab(tmp_path, "--autoplay-policy=no-user-gesture-required") as tab, \
            viewer(tab, "?mode=obs", audio=str(SAMPLE)) as sink:
        show(tab, sink, 0, pose())
        tab.wait_until("emotalkViewer.audio.state === 'playing'")
        assert tab.exceptions == []


# ---- nothing from elsewhere ----

# import ... from "x", import "x", export ... from "x" (minified too), and import("x")
MODULE_SPECIFIER = re.compile(r"""\b(?:import|export)\s*(?:[\w$*{},\s]*?\bfrom\s*)?["']([^"']+)["']"""
                              r"""|\bimport\(\s*["']([^"']+)["']""")


def test_the_page_and_every_script_it_imports_load_only_from_this_server() -> None:
    html = (VIEWER / "index.html").read_text()
    assert re.findall(r'(?:src|href)="([^"]*)"', html) == ["data:,", "viewer.css", "face.js", "controls.js", "viewer.js"]
    import_map = json.loads(re.search(r'<script type="importmap">(.*?)</script>', html, re.S).group(1))
    assert import_map == {"imports": {"three": "./vendor/three.module.min.js"}}
    seen = set()
    for path, name in PAGES.items():
        if not name.endswith(".js"):
            continue
        text = (VIEWER / name).read_text()
        found = [static or dynamic for static, dynamic in MODULE_SPECIFIER.findall(text)]
        assert len(re.findall(r"\bimport\s*\(", text)) == len(re.findall(r"\bimport\(\s*[\"']", text)), (
            f"{name} imports a module whose name is computed")
        for specifier in found:
            # the import map's targets are relative to the page, other names to the importing module
            url = urljoin("http://viewer/", import_map["imports"][specifier]) if specifier in import_map["imports"] \
                else urljoin(f"http://viewer{path}", specifier)
            assert urlsplit(url).netloc == "viewer" and urlsplit(url).path in PAGES, f"{name} imports {specifier!r}"
            seen.add(urlsplit(url).path)
    # the modules do import each other: the pattern finds what it must
    assert {"/avatar.js", "/vendor/three.core.min.js", "/vendor/three.module.min.js", "/vendor/GLTFLoader.min.js",
            "/vendor/three-vrm.module.min.js"} <= seen
    for name in ("index.html", "viewer.js", "avatar.js", "face.js", "viewer.css"):
        assert not re.search(r"https?://", (VIEWER / name).read_text()), f"{name} names another server"


def test_in_chromium_every_request_stays_on_this_server(tab: Tab, tmp_path: Path) -> None:
    model = tmp_path / "presets.vrm"
    model.write_bytes(vrm("1.0", PRESETS_1))
    tab.call("Page.enable")
    tab.call("Page.addScriptToEvaluateOnNewDocument", source=WATCH_CSP)
    with viewer(tab, avatar=str(model), audio=str(SAMPLE)) as sink:
        avatar_loaded(tab)
        show(tab, sink, 0, pose(jawOpen=0.5))
        click(tab, "play")
        tab.wait_until("emotalkViewer.audio.state === 'playing'")
        urls = tab.evaluate("performance.getEntriesByType('resource').map((e) => e.name)")
        violations = tab.evaluate("window.cspViolations")
        origin = f"http://127.0.0.1:{sink.port}"
    assert [url for url in urls if not url.startswith((f"{origin}/", "data:", "blob:"))] == []
    assert {urlsplit(url).path for url in urls} >= {
        "/viewer.js", "/face.js", "/viewer.json", "/avatar.js", "/vendor/three.core.min.js",
        "/vendor/three.module.min.js", "/vendor/GLTFLoader.min.js", "/vendor/three-vrm.module.min.js",
        "/avatar.vrm", "/audio.wav"}
    assert violations == [] and tab.exceptions == []


def test_the_vendored_libraries_are_the_pinned_ones_with_their_licences() -> None:
    versions = (VIEWER / "vendor" / "VERSIONS").read_text().splitlines()
    script = (ROOT / "scripts" / "vendor_viewer.sh").read_text()
    pins = dict(re.findall(r"^(THREE_VERSION|THREE_VRM_VERSION|ESBUILD_VERSION)=(\S+)", script, re.M))
    assert versions[:3] == [f"three {pins['THREE_VERSION']}", f"@pixiv/three-vrm {pins['THREE_VRM_VERSION']}",
                            f"esbuild {pins['ESBUILD_VERSION']} (minified GLTFLoader.min.js)"]
    hashes = {name: digest for digest, name in (line.split() for line in versions[3:])}
    assert set(hashes) == {*websocket_sink.VENDOR, "LICENSE-three", "LICENSE-three-vrm"}
    for name, digest in hashes.items():
        assert hashlib.sha256((VIEWER / "vendor" / name).read_bytes()).hexdigest() == digest, name
    for name in ("LICENSE-three", "LICENSE-three-vrm"):
        assert "MIT License" in (VIEWER / "vendor" / name).read_text()
    assert sorted(p.name for p in (VIEWER / "vendor").iterdir()) == sorted([*hashes, "VERSIONS"])
    assert "vendor/*" in (ROOT / "pyproject.toml").read_text(), "the wheel must hold vendor/"


# ---- audio ----

def test_the_audio_is_the_file_in_mono_and_needs_the_token(tmp_path: Path) -> None:
    rate = 22050
    t = np.arange(rate) / rate
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 660 * t)], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, rate, subtype="FLOAT")
    sink = WebSocketSink("127.0.0.1", 0, token="secret", audio=str(path))
    sink.open()
    try:
        status, kind, config = get(sink.port, "/viewer.json")  # the page's own files need no token
        assert (status, kind, json.loads(config)) == (200, "application/json", {"avatar": None, "audio": "/audio.wav"})
        assert get(sink.port, "/audio.wav")[0] == 401 and get(sink.port, "/audio.wav?token=wrong")[0] == 401
        assert get(sink.port, "/avatar.vrm?token=secret")[0] == 404  # none given
        status, kind, body = get(sink.port, "/audio.wav?token=secret")
    finally:
        sink.close()
    assert (status, kind) == (200, "audio/wav")
    samples, served_rate = sf.read(io.BytesIO(body), dtype="float64")
    assert served_rate == rate and samples.shape == (rate,) and sf.info(io.BytesIO(body)).subtype == "PCM_16"
    assert np.abs(samples - stereo.mean(axis=1)).max() < 1.5 / 32768


def test_a_file_longer_than_the_viewer_plays_gets_no_audio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(websocket_sink, "MAX_AUDIO_S", 4)  # the clip is 5 s
    sink = WebSocketSink("127.0.0.1", 0, audio=str(SAMPLE))
    sink.open()
    try:
        assert json.loads(get(sink.port, "/viewer.json")[2]) == {"avatar": None, "audio": None}
        assert get(sink.port, "/audio.wav")[0] == 404
    finally:
        sink.close()


class LiveStream:
    """The speech frames at the speed of a microphone from a thread, as `emotalk-stream --wav` sends
    them, then the final frame."""

    def __init__(self, sink: WebSocketSink, weights: np.ndarray):
        self._sink, self._weights = sink, weights
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop = threading.Event()

    def __enter__(self) -> LiveStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        start = time.monotonic()
        for index, weights in enumerate(self._weights):
            self._sink.submit(OutFrame(index, index / FPS, FPS, weights, emotion="happy"))
            if self._stop.wait(max(0.0, start + (index + 1) / FPS - time.monotonic())):
                return
        self._sink.submit(neutral_frame(len(self._weights), FPS))


def sync_samples(tab: Tab, seconds: float) -> list[tuple[float, float, float]]:
    """(audio position, time of the frame on screen, time of the newest frame), read together, from
    the second display refresh after the sound started (the first picks the frame for it)."""
    tab.call("Runtime.evaluate", awaitPromise=True, expression=(
        "new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"))
    samples, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(tab.evaluate("[emotalkViewer.audio.position, emotalkViewer.shown.time, "
                                    "emotalkViewer.last.time]"))
        time.sleep(0.05)
    return samples


def test_the_audio_plays_in_sync_with_the_face_live_and_again_after_the_end(tab: Tab, speech: Speech) -> None:
    with viewer(tab, audio=str(SAMPLE)) as sink:
        tab.wait_until("!document.getElementById('play').hidden")
        with LiveStream(sink, speech.weights):
            tab.wait_until("emotalkViewer.frames > 15")
            assert tab.evaluate("emotalkViewer.audio.state") == "ready"  # no sound before a click
            click(tab, "play")
            tab.wait_until("emotalkViewer.audio.state === 'playing'")
            live = sync_samples(tab, 2.0)
            assert tab.evaluate("document.getElementById('play').textContent") == "■ stop audio"
            tab.wait_until("emotalkViewer.last.final", 10)
        tab.wait_until("emotalkViewer.audio.state === 'ready'", 10)  # the clip played to its end
        click(tab, "play")  # the stream is over: the take again, from its start
        tab.wait_until("emotalkViewer.audio.state === 'playing'")
        replay = sync_samples(tab, 1.0)
        click(tab, "play")
        tab.wait_until("emotalkViewer.audio.state === 'ready'")
        assert tab.exceptions == []
    for position, shown, _ in live + replay:
        # the frame on screen is the one for the sound heard now (a frame lasts 1/30 s; a display refresh 1/60 s)
        assert -0.005 <= position - shown <= 1 / FPS + 0.07, (position, shown)
    lags = [newest - position for position, _, newest in live]
    assert all(LIVE_DELAY_S - 0.05 <= lag <= LIVE_DELAY_S + 0.35 for lag in lags), lags
    assert replay[0][0] < 0.6 and replay[-1][0] > replay[0][0] + 0.5


def test_without_audio_there_is_no_play_button(tab: Tab) -> None:
    with viewer(tab) as sink:
        show(tab, sink, 0, pose(jawOpen=0.2))
        tab.wait_until("document.readyState === 'complete'")
        assert json.loads(get(sink.port, "/viewer.json")[2]) == {"avatar": None, "audio": None}
        assert tab.evaluate("[document.getElementById('play').hidden, emotalkViewer.audio.state]") == [True, "none"]


# ---- live controls ----

def set_control(tab: Tab, element: str, value: object) -> None:
    """What a user's hand does to an input: a new value, then its input and change events."""
    prop = "checked" if isinstance(value, bool) else "value"
    tab.evaluate(f"(() => {{ const e = document.getElementById('{element}'); e.{prop} = {json.dumps(value)};"
                 f"e.dispatchEvent(new Event('input')); e.dispatchEvent(new Event('change')); }})()")


def header_emotion(tab: Tab) -> str:
    return tab.evaluate("document.getElementById('emotion-now').textContent + ' ' + "
                        "document.getElementById('emotion-source').textContent")


def test_every_control_on_the_page_reaches_the_stream_and_the_header_shows_the_emotion_in_effect(
        tab: Tab, board: ControlBoard) -> None:
    with viewer(tab, board=board) as sink:
        show(tab, sink, 0, pose(), emotion="happy")
        tab.wait_until("emotalkViewer.controls !== null")
        assert header_emotion(tab) == "calm (set)"  # the model's default, not the voice's "happy"
        options = tab.evaluate("[...document.getElementById('emotion').options].map((o) => o.value)")
        assert options == ["auto", "neutral", "calm", "happy", "sad", "angry", "fearful", "disgusted", "surprised"]
        assert tab.evaluate("document.getElementById('level-voice').checked")  # the default: following the voice

        changes = [("emotion", "sad", lambda c, f: c.emotion == "sad:1.00"),
                   ("strength", 0.4, lambda c, f: c.emotion == "sad:0.40"),
                   ("level", 0.3, lambda c, f: c.level == 0.3),
                   ("level-voice", True, lambda c, f: c.level == "voice"),
                   ("person", 5, lambda c, f: c.person == 5),
                   ("smoothing", 0.12, lambda c, f: f.smoothing == 0.12),
                   ("blink", False, lambda c, f: f.blink is False),
                   ("head_motion", 0.5, lambda c, f: f.head_motion == 0.5),
                   ("eye_motion", 1.5, lambda c, f: f.eye_motion == 1.5)]
        changes += [(f"gain-{region}", 0.5 + i / 4, lambda c, f, r=region, g=0.5 + i / 4: c.gains.get(r) == g)
                     for i, region in enumerate(REGIONS)]
        for index, (element, value, applied) in enumerate(changes, start=1):
            set_control(tab, element, value)
            wait_for(lambda: applied(*board.current[:2]), f"{element} = {value} to reach the stream", 5)
            tab.wait_until("document.getElementById('reply').textContent.endsWith('→ ok')")
        assert header_emotion(tab) == "sad 0.40 (set)"

        board.submit({"emotion": "auto"}, origin="test")  # from elsewhere (OSC): shown with the next frame
        show(tab, sink, 1, pose(), emotion="happy")
        tab.wait_until("emotalkViewer.controls.emotion === 'auto'")
        tab.wait_until("document.getElementById('emotion-now').textContent === 'happy'")
        assert header_emotion(tab) == "happy (heard)"
        board.submit({"emotion": "angry:0.9", "level": 0.2, "gain": {"jaw": 3.0}}, origin="test")
        show(tab, sink, 2, pose(), emotion="happy")
        tab.wait_until("emotalkViewer.controls.level === 0.2")
        shown = tab.evaluate("['emotion', 'strength', 'level', 'level-voice', 'gain-jaw', 'blink'].map((id) => "
                             "document.getElementById(id).type === 'checkbox' ? document.getElementById(id).checked "
                             ": document.getElementById(id).value)")
        assert header_emotion(tab) == "angry 0.9 (set)"
        assert tab.exceptions == []
    assert shown == ["angry", "0.9", "0.2", False, "3", False]
    assert board.state() == {"emotion": "angry:0.9", "level": 0.2, "person": 5, "smoothing": 0.12, "blink": False,
                             "head_motion": 0.5, "eye_motion": 1.5,
                             "gain": {region: 0.5 + i / 4 for i, region in enumerate(REGIONS)} | {"jaw": 3.0},
                             "labels": ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgusted", "surprised"],
                             "persons": 24}


def test_a_client_gets_the_controls_only_when_it_asks(board: ControlBoard) -> None:
    from websockets.sync.client import connect

    sink = WebSocketSink("127.0.0.1", 0, board=board)
    sink.open()
    try:
        with connect(f"ws://127.0.0.1:{sink.port}/ws?controls=1", open_timeout=5) as asking, \
                connect(f"ws://127.0.0.1:{sink.port}/ws", open_timeout=5) as plain:
            assert json.loads(asking.recv(timeout=5)) == {"controls": board.state()}
            wait_for(lambda: sink.clients == 2, "both clients")
            plain.send(json.dumps({"person": 7}))
            assert json.loads(plain.recv(timeout=5)) == {"ok": True}
            sink.submit(OutFrame(0, 0.0, FPS, pose()))
            assert json.loads(asking.recv(timeout=5))["controls"]["person"] == 7
            assert json.loads(asking.recv(timeout=5))["frame"] == 0
            assert json.loads(plain.recv(timeout=5))["frame"] == 0  # frames only, as before
    finally:
        sink.close()


# ---- emotalk-stream itself ----

def test_emotalk_stream_avatar_shows_the_model_speaking_and_offers_the_audio(tab: Tab, tmp_path: Path) -> None:
    model = tmp_path / "presets.vrm"
    model.write_bytes(vrm("1.0", PRESETS_1))
    port = free_port(socket.SOCK_STREAM)
    process = subprocess.Popen([*CLI, "--wav", str(SAMPLE), "--ws", f"127.0.0.1:{port}", "--avatar", str(model),
                                "--wait-for-client", "--no-blink"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _answers(port) or process.poll() is not None, "emotalk-stream to serve the viewer", 60)
        assert json.loads(get(port, "/viewer.json")[2]) == {"avatar": "/avatar.vrm", "audio": "/audio.wav"}
        assert get(port, "/avatar.vrm")[1:] == ("model/gltf-binary", model.read_bytes())
        tab.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
        aa = []
        while not tab.evaluate("!!(window.emotalkViewer && emotalkViewer.last && emotalkViewer.last.final)"):
            aa.append(tab.evaluate("window.emotalkViewer && emotalkViewer.avatar && emotalkViewer.avatar.values.aa"))
            time.sleep(0.03)
        tab.wait_until("emotalkViewer.avatar.values.aa === 0")  # the neutral frame that ends the stream
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    spoken = [value for value in aa if value is not None]
    assert len(spoken) > 30 and max(spoken) > 0.25 and min(spoken) < 0.02, spoken


def _answers(port: int) -> bool:
    try:
        return get(port, "/viewer.json")[0] == 200
    except OSError:
        return False


@pytest.mark.parametrize(("args", "message"), [
    (["--record", "{take}", "--avatar", "{model}"], "--avatar is shown by the viewer page: add --ws [HOST:]PORT"),
    (["--ws", "0", "--avatar", "{text}"], "is not a VRM file (binary glTF"),
    (["--ws", "0", "--avatar", "{missing}"], "cannot read it (No such file or directory)"),
])
def test_a_bad_avatar_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "face.vrm").write_bytes(vrm("1.0", PRESETS_1))
    (tmp_path / "notes.vrm").write_text("not a model\n")
    names = {"take": tmp_path / "take.csv", "model": tmp_path / "face.vrm", "text": tmp_path / "notes.vrm", "missing": tmp_path / "gone.vrm"}
    done = subprocess.run([*CLI, "--wav", str(SAMPLE), *(a.format(**names) for a in args)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("emotalk-stream: error: --avatar") and message in done.stderr, done.stderr
