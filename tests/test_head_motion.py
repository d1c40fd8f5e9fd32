"""Head and eye motion: the pure model (bounded, smooth, seeded, still in silence, moving with speech,
amount 0 exactly off, live changes without a jump), its live controls, and end to end through
`emotalk-stream` into a Live Link Face CSV take and, live, to a Live Link receiver and a WebSocket client."""
from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from pythonosc.udp_client import SimpleUDPClient
from websockets.sync.client import connect

from emotalk_stream.streamer.controls import ControlBoard
from emotalk_stream.streamer.face import MAX_MOTION, check_motion
from emotalk_stream.training.blinks import BLINK_CHANNELS
from emotalk_stream.streamer.head_motion import HEAD_LIMIT, REST, Motion, MotionModel
from emotalk_stream.training.blendshapes import COUNT, INDEX, LIVELINK_CSV_ORDER, LIVELINK_UDP_ORDER, ROTATIONS
from emotalk_stream.training.errors import UserError
from livelink_decoder import decode
from waiting import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "training" / "assets" / "sample.wav"
CLI = [sys.executable, "-m", "emotalk_stream.streamer.cli"]
FPS = 30


def speech_jaw(seconds: float, seed: int = 0, fps: int = FPS) -> np.ndarray:
    """jawOpen per frame as the bundled model opens it for speech: phrases of 1.5-3 s of syllables
    (4-6 a second, open 0.1-0.3, about a third of them stressed to 0.3-0.45) between pauses of
    0.5-1 s with the jaw shut."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fps)) / fps
    jaw = np.zeros(len(t))
    start = 0.3
    while start < seconds:
        end = start + rng.uniform(1.5, 3.0)
        syllable = start
        while syllable < end:
            length = 1.0 / rng.uniform(4.0, 6.0)
            peak = rng.uniform(0.3, 0.45) if rng.random() < 0.35 else rng.uniform(0.1, 0.2)
            inside = (t >= syllable) & (t < syllable + length)
            jaw[inside] = 0.1 + (peak - 0.1) * np.sin(np.pi * (t[inside] - syllable) / length) ** 2
            syllable += length
        start = end + rng.uniform(0.5, 1.0)
    return jaw


def run(jaw: np.ndarray, seed: int = 0, head: float | list[float] = 1.0, eyes: float | list[float] = 1.0,
        fps: int = FPS, lids: np.ndarray | None = None) -> list[Motion]:
    """The model over frames whose only weights are jawOpen and the eyelids; amounts per frame or fixed."""
    model = MotionModel(fps, seed)
    out = []
    for i, value in enumerate(jaw):
        weights = np.zeros(COUNT, np.float32)
        weights[INDEX["jawOpen"]] = value
        weights[list(BLINK_CHANNELS)] = 0.0 if lids is None else lids[i]
        out.append(model(i / fps, weights, head if isinstance(head, float) else head[i],
                         eyes if isinstance(eyes, float) else eyes[i]))
    return out


def heads(motions: list[Motion]) -> np.ndarray:
    """(T, 3) pitch, yaw, roll; NaN where the head is off."""
    return np.array([[np.nan] * 3 if m.head is None else [m.head.pitch, m.head.yaw, m.head.roll] for m in motions])


def eyes_of(motions: list[Motion]) -> np.ndarray:
    """(T, 3) pitch, yaw, roll of the eyes; NaN where off."""
    return np.array([[np.nan] * 3 if m.eyes is None else [m.eyes.pitch, m.eyes.yaw, m.eyes.roll] for m in motions])


# ---------------------------------------------------------------- the head

@pytest.mark.parametrize("fps", [30, 60])
@pytest.mark.parametrize("amount", [1.0, MAX_MOTION])
def test_the_head_stays_within_a_few_degrees_and_never_jumps(fps: int, amount: float) -> None:
    head = heads(run(speech_jaw(120, fps=fps), head=amount, fps=fps))
    assert np.isfinite(head).all()
    peak = np.abs(head).max(axis=0)
    assert (peak < amount * HEAD_LIMIT).all(), peak  # pitch 5, yaw 6, roll 4 degrees at amount 1
    assert peak[0] > 1.5 * amount, "nods reach a visible pitch"
    steps = np.abs(np.diff(head, axis=0)).max(axis=0)
    assert (steps < amount * 30.0 / fps).all(), steps  # under 30 degrees a second: a nod, not a jump


def test_the_head_moves_with_speech_and_is_still_in_silence() -> None:
    jaw = np.concatenate([np.zeros(10 * FPS), speech_jaw(20), np.zeros(10 * FPS)])
    head = heads(run(jaw))
    silent_start, speaking, silent_end = head[:10 * FPS], head[10 * FPS:30 * FPS], head[33 * FPS:]
    assert not silent_start.any(), "digital silence from the start: exactly at rest"
    assert (speaking.std(axis=0) > 0.3).all(), speaking.std(axis=0)  # every axis moves while speaking
    assert np.abs(silent_end).max() < 0.1 and np.abs(np.diff(silent_end, axis=0)).max() < 0.01  # settled


def test_a_stressed_syllable_nods_the_head_down() -> None:
    jaw = np.full(4 * FPS, 0.12)  # steady speech ...
    jaw[2 * FPS:2 * FPS + 6] = [0.2, 0.3, 0.4, 0.4, 0.3, 0.2]  # ... and one stressed syllable at 2 s
    pitch = heads(run(jaw))[:, 0]
    before, after = pitch[int(1.6 * FPS):2 * FPS], pitch[2 * FPS:int(2.8 * FPS)]
    assert after.max() - before.max() > 0.8, (before.max(), after.max())  # pitch > 0 is down
    assert int(np.argmax(after)) < 0.6 * FPS, "the nod peaks within 0.6 s of the syllable"


def test_a_phrase_end_tilts_the_head_then_it_rests() -> None:
    jaw = np.concatenate([np.full(2 * FPS, 0.15), np.zeros(4 * FPS)])
    head = heads(run(jaw))
    ended = head[2 * FPS:]
    tilt = np.abs(ended[:, 2]).max()
    assert tilt > 0.8, "a settling tilt once the phrase has ended"
    assert int(np.argmax(np.abs(ended[:, 2]))) > 0.3 * FPS, "after the pause that ends the phrase"
    assert np.abs(head[-FPS:]).max() < 0.2


def test_the_same_seed_repeats_the_motion_and_another_seed_changes_it() -> None:
    jaw = speech_jaw(20)
    first, again, other = heads(run(jaw, seed=7)), heads(run(jaw, seed=7)), heads(run(jaw, seed=8))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 0.5
    np.testing.assert_array_equal(eyes_of(run(jaw, seed=7)), eyes_of(run(jaw, seed=7)))
    assert np.abs(eyes_of(run(jaw, seed=7)) - eyes_of(run(jaw, seed=8))).max() > 1.0


def test_the_amount_only_scales_the_angles() -> None:
    jaw = speech_jaw(15)
    full, half = run(jaw, seed=3), run(jaw, seed=3, head=0.5, eyes=0.5)
    np.testing.assert_allclose(heads(half), 0.5 * heads(full), atol=1e-12)
    np.testing.assert_allclose(eyes_of(half), 0.5 * eyes_of(full), atol=1e-12)


def test_amount_zero_is_exactly_off_from_the_start() -> None:
    motions = run(speech_jaw(10), head=0.0, eyes=0.0)
    assert all(m == Motion(None, None) for m in motions)
    assert MotionModel(FPS).rest() == Motion(None, None)


def test_a_live_change_of_amount_ramps_without_a_jump_and_reaches_exact_rest() -> None:
    jaw = speech_jaw(12)
    change = 6 * FPS
    head_amounts = [1.0] * change + [0.0] * (len(jaw) - change)
    eye_amounts = [0.0] * change + [1.0] * (len(jaw) - change)
    model = MotionModel(FPS, 0)
    motions = []
    for i, value in enumerate(jaw):
        weights = np.zeros(COUNT, np.float32)
        weights[INDEX["jawOpen"]] = value
        motions.append(model(i / FPS, weights, head_amounts[i], eye_amounts[i]))
    rest = next(i for i in range(change, len(motions)) if motions[i].head == REST)
    assert abs(rest - (change + 0.3 * FPS)) <= 1, "the ramp (a change of 1 in 0.3 s) ends on the rest pose, exactly"
    assert np.abs(np.diff(heads(motions[:rest + 1]), axis=0)).max() < 1.0, "no jump as the head ramps down"
    assert all(m.head is None for m in motions[rest + 1:]), "then nothing: the head is off"
    assert all(m.eyes is None for m in motions[:change]) and motions[change].eyes is not None
    assert model.rest() == Motion(None, REST)


# ---------------------------------------------------------------- the eyes

def gaze_segments(eyes: np.ndarray) -> tuple[list[int], list[int]]:
    """(the frames each whole gaze hold lasted, the frames each move took) of a (T, 3) gaze."""
    moving = np.abs(np.diff(eyes, axis=0)).max(axis=1) > 0
    runs = [(bool(m), len(list(group))) for m, group in itertools.groupby(moving)]
    holds = [n for m, n in runs if not m][1:-1]  # the first and last are cut by the stream's ends
    return holds, [n for m, n in runs if m]


def test_gaze_holds_last_half_a_second_to_three_and_saccades_are_quick() -> None:
    eyes = eyes_of(run(speech_jaw(300, seed=1), seed=1))
    holds, moves = gaze_segments(eyes)
    assert len(holds) > 100
    assert min(holds) >= 0.5 * FPS - 1 and max(holds) <= 3.0 * FPS + 2, (min(holds), max(holds))
    assert max(moves) <= 3, "a saccade takes 25-60 ms: at most 3 frames at 30 fps"
    assert eyes[:, 2].max() == 0.0 == eyes[:, 2].min(), "no eye roll"
    assert eyes[:, 1].min() >= -6.0 and eyes[:, 1].max() <= 6.0  # yaw, degrees
    assert eyes[:, 0].min() >= -3.0 and eyes[:, 0].max() <= 4.0  # pitch: down > 0
    assert np.abs(eyes[:, :2]).max(axis=0).min() > 2.0, "the gaze goes somewhere"
    at_audience = np.mean(np.abs(eyes[:, :2]).max(axis=1) <= 0.5)
    assert 0.3 < at_audience < 0.7, at_audience


def test_a_blink_brings_the_next_gaze_shift_forward() -> None:
    jaw = speech_jaw(300, seed=2)
    lids = np.zeros(len(jaw))
    onsets = np.arange(FPS, len(jaw) - 3, int(2.3 * FPS))
    for onset in onsets:
        lids[onset:onset + 3] = [0.6, 1.0, 0.5]

    def shifts_at_onsets(lid: np.ndarray | None) -> float:
        eyes = eyes_of(run(jaw, seed=2, lids=lid))
        moved = np.abs(np.diff(eyes, axis=0)).max(axis=1) > 0  # moved[k]: between frame k and k + 1
        return float(np.mean(moved[onsets]))

    with_blinks, without = shifts_at_onsets(lids), shifts_at_onsets(None)
    assert with_blinks > 0.2 and without < 0.08, (with_blinks, without)


# ---------------------------------------------------------------- controls

def test_amounts_are_checked() -> None:
    assert check_motion(0.0, "--head-motion") == 0.0 and check_motion(2.0, "--eye-motion") == 2.0
    for bad in (-0.1, 2.01, float("nan"), float("inf")):
        with pytest.raises(UserError, match=r"--head-motion .* is not an amount from 0 \(off\) to 2\.0"):
            check_motion(bad, "--head-motion")


def test_live_controls_change_the_amounts_and_refuse_bad_ones(board: ControlBoard) -> None:
    assert board.state()["head_motion"] == 1.0 and board.state()["eye_motion"] == 1.0
    assert board.submit_osc("/emotalk/head_motion", [0.5], "test") is None
    assert board.submit_osc("/emotalk/eye_motion", [0], "test") is None
    assert board.submit_json('{"head_motion": 2, "eye_motion": 1.5}', "test") is None
    face = board.current[1]
    assert (face.head_motion, face.eye_motion) == (2.0, 1.5)
    before = board.current
    for reason in (board.submit_json('{"head_motion": 2.5}', "t"), board.submit_json('{"eye_motion": -1}', "t"),
                   board.submit_json('{"head_motion": true}', "t"), board.submit_json('{"eye_motion": "off"}', "t"),
                   board.submit_json('{"head_motion": ' + "9" * 400 + "}", "t"),
                   board.submit_osc("/emotalk/head_motion", [float("nan")], "t")):
        assert isinstance(reason, str) and "motion" in reason
    assert board.current == before


# ---------------------------------------------------------------- end to end

def rotation_columns(path: Path) -> np.ndarray:
    """(T, 9) the Live Link Face CSV's rotation columns, by name, in ROTATIONS order, in degrees."""
    rows = path.read_text().splitlines()
    header = rows[0].split(",")
    assert header[2:] == list(LIVELINK_CSV_ORDER)
    columns = [header.index(name) for name in ROTATIONS]
    return np.array([[float(row.split(",")[c]) for c in columns] for row in rows[1:]]) * 180.0


def record(tmp_path: Path, name: str, *args: str) -> np.ndarray:
    path = tmp_path / name
    done = subprocess.run([*CLI, "--wav", str(SAMPLE), "--no-pace", "--record", str(path), "--quiet", *args],
                          capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()
    return rotation_columns(path)


def test_a_take_records_head_and_eyes_seeded_and_zero_when_off(tmp_path: Path) -> None:
    first, again = record(tmp_path, "a.csv", "--seed", "5"), record(tmp_path, "b.csv", "--seed", "5")
    other = record(tmp_path, "c.csv", "--seed", "6")
    off = record(tmp_path, "d.csv", "--head-motion", "0", "--eye-motion", "0")
    np.testing.assert_array_equal(first, again)  # the audio clock, not the wall clock: a rerun is identical
    assert np.abs(first - other).max() > 0.5
    assert not off.any(), "amount 0: every rotation exactly 0"
    head, eyes = first[:, :3], first[:, 3:]
    assert np.ptp(head, axis=0).min() > 0.5, "yaw, pitch and roll all move with the voice"
    assert np.abs(head).max() < 6.0 and np.abs(np.diff(head, axis=0)).max() < 1.0
    np.testing.assert_array_equal(eyes[:, :3], eyes[:, 3:])  # both eyes look the same way
    assert not eyes[:, 2].any() and np.ptp(eyes[:, 1]) > 1.0  # no roll; the gaze moves


def test_live_controls_turn_the_head_and_eyes_off_mid_stream(time_limit: None) -> None:
    control, ws_port = free_port(), free_port(socket.SOCK_STREAM)
    packets: list[dict] = []
    ended = threading.Event()

    def receive(sock: socket.socket) -> None:
        while True:
            try:
                packets.append(decode(sock.recv(2048)))
            except TimeoutError:
                if ended.is_set():
                    return

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(0.5)
        reader = threading.Thread(target=receive, args=(receiver,))
        reader.start()
        process = subprocess.Popen([*CLI, "--wav", str(SAMPLE), "--livelink", f"127.0.0.1:{receiver.getsockname()[1]}",
                                    "--control", f"127.0.0.1:{control}", "--ws", f"127.0.0.1:{ws_port}",
                                    "--wait-for-client", "--quiet"], stderr=subprocess.PIPE)
        try:
            wait_for(lambda: _listening(ws_port), timeout=30, what="the WebSocket server")
            with connect(f"ws://127.0.0.1:{ws_port}/ws", open_timeout=5) as ws:
                frames = [json.loads(ws.recv(timeout=10)) for _ in range(45)]
                SimpleUDPClient("127.0.0.1", control).send_message("/emotalk/head_motion", 0.0)
                ws.send('{"eye_motion": 0}')
                while "ok" not in (message := json.loads(ws.recv(timeout=10))):
                    frames.append(message)
                while not frames[-1]["final"]:
                    frames.append(json.loads(ws.recv(timeout=10)))
            process.wait(timeout=30)
        finally:
            process.kill()
            _, err = process.communicate()
            ended.set()
            reader.join(10)
    assert process.returncode == 0, err.decode()
    before, after = frames[:45], frames[-30:]
    assert any(f["head"]["pitch"] for f in before) and any(f["eyes"]["yaw"] or f["eyes"]["pitch"] for f in before)
    assert all(f["eyes"] == {"pitch": 0.0, "yaw": 0.0} for f in after), "eye_motion 0 over WebSocket"
    assert all(f["head"] == {"pitch": 0.0, "yaw": 0.0, "roll": 0.0} for f in after), "head_motion 0 over OSC"
    slots = [LIVELINK_UDP_ORDER.index(name) for name in ROTATIONS]
    rotations = np.array([p["values"][slots] for p in sorted(packets, key=lambda p: p["frame"])])
    assert len(rotations) == len(frames) and np.abs(rotations[:45]).max() > 0
    assert not rotations[-30:].any(), "Live Link heads and eyes rest too"


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
