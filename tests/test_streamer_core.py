"""The streamer's pure parts: the frame clock, face post-processing, live controls, addresses, the
status line."""
from __future__ import annotations

import io
import logging
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from emotalk_stream.engine import Controls, Engine, Frame
from emotalk_stream.streamer.address import parse_address
from emotalk_stream.streamer.clock import FrameClock
from emotalk_stream.streamer.console import Console, fit
from emotalk_stream.streamer.controls import ControlBoard
from emotalk_stream.streamer.face import FacePost, FaceSettings
from emotalk_stream.training.blinks import BLINK_CHANNELS, Blinker
from emotalk_stream.streamer.stats import status_parts
from emotalk_stream.training.blendshapes import COUNT, INDEX
from emotalk_stream.training.errors import UserError
from emotalk_stream.training.framing import frame_count

RATE, MODEL_FPS = 16000, 30


def run_clock(samples: int, fps: int, hop: int = 320) -> list[tuple[int, float, np.ndarray]]:
    """Feed a clock engine-like frames (frame i carries the value i) as audio arrives hop by hop."""
    clock = FrameClock(MODEL_FPS, fps, RATE)
    out, pushed, received = [], 0, 0
    total_model = frame_count(samples, RATE, MODEL_FPS)
    while received < samples:
        received = min(samples, received + hop)
        # a model frame is out once 40 ms of audio past its time has arrived (the engine's look-ahead)
        while pushed < total_model and (pushed / MODEL_FPS + 0.04) * RATE <= received:
            clock.push(Frame(pushed, pushed / MODEL_FPS, np.full(COUNT, pushed, np.float32)))
            pushed += 1
        out += clock.ready(received)
    while pushed < total_model:  # the flushed tail
        clock.push(Frame(pushed, pushed / MODEL_FPS, np.full(COUNT, pushed, np.float32)))
        pushed += 1
    return out + clock.ready(received, finished=True)


@settings(max_examples=200, deadline=None)
@given(samples=st.integers(0, 5 * RATE), fps=st.sampled_from([30, 60]), hop=st.sampled_from([160, 320, 640, 1000]))
def test_n_seconds_give_exactly_ceil_n_fps_frames(samples: int, fps: int, hop: int) -> None:
    frames = run_clock(samples, fps, hop)
    expected = math.ceil(Fraction(samples, RATE) * fps)  # as offline inference counts
    assert len(frames) == expected
    assert [f[0] for f in frames] == list(range(expected))
    assert all(f[1] == f[0] / fps for f in frames)


def test_sixty_fps_interpolates_between_model_frames() -> None:
    frames = run_clock(RATE, 60)
    values = [float(f[2][0]) for f in frames]
    assert values[:5] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert len(values) == 60 and frame_count(RATE) == 30
    assert values[-2:] == [29.0, 29.0]  # 59/60 s lies past the last model frame (29/30 s): held


def test_frames_wait_until_the_audio_guarantees_them() -> None:
    clock = FrameClock(MODEL_FPS, 30, RATE)
    clock.push(Frame(0, 0.0, np.zeros(COUNT, np.float32)))
    clock.push(Frame(1, 1 / 30, np.zeros(COUNT, np.float32)))
    assert clock.ready(0) == []  # no audio, no frame
    assert [f[0] for f in clock.ready(533)] == [0]  # 33.31 ms: frame 1 (at 33.33 ms) is not in the audio yet
    assert [f[0] for f in clock.ready(534)] == [1]  # 33.38 ms holds it


def test_smoothing_is_a_causal_one_pole_with_the_given_time_constant() -> None:
    fps, tau = 60, 0.1
    post = FacePost(fps, FaceSettings(smoothing=tau, blink=False))
    step = np.zeros(COUNT, np.float32)
    post(0.0, step)
    jaw = INDEX["jawOpen"]
    step[jaw] = 1.0
    values = [post(i / fps, step)[jaw] for i in range(1, 4 * int(tau * fps))]
    at_tau = values[int(tau * fps) - 1]
    assert abs(at_tau - (1 - math.exp(-1))) < 0.02
    assert all(b >= a for a, b in zip(values, values[1:]))
    unsmoothed = FacePost(fps, FaceSettings(smoothing=0.0, blink=False))
    assert unsmoothed(0.0, step)[jaw] == 1.0


def test_blinks_are_natural_and_seeded() -> None:
    fps, minutes = 60, 10
    times = np.arange(minutes * 60 * fps) / fps
    blinker = Blinker(seed=3)
    closure = np.array([blinker.closure(t) for t in times])
    shut = closure > 0.5
    starts = np.flatnonzero(shut[1:] & ~shut[:-1])
    per_minute = len(starts) / minutes
    assert 10 <= per_minute <= 25
    lengths = np.diff(np.flatnonzero(np.diff(shut.astype(int)) != 0))[::2] / fps
    assert 0.05 <= np.median(lengths) <= 0.3
    again = Blinker(seed=3)
    assert np.array_equal(closure[:600], [again.closure(t) for t in times[:600]])
    post = FacePost(fps, FaceSettings(blink=True), seed=3)
    out = np.stack([post(t, np.zeros(COUNT, np.float32)) for t in times[:fps * 20]])
    assert out[:, BLINK_CHANNELS].max() == pytest.approx(1.0, abs=0.05)
    off = FacePost(fps, FaceSettings(blink=False), seed=3)
    assert max(off(t, np.zeros(COUNT, np.float32))[BLINK_CHANNELS[0]] for t in times[:fps * 20]) == 0.0



def test_control_board_applies_valid_changes_and_refuses_bad_ones(engine: Engine) -> None:
    board = ControlBoard(engine, Controls(), FaceSettings())
    assert board.submit({"emotion": "happy:0.5", "level": 0.3}, "test") is None
    controls, face, version = board.current
    assert (controls.emotion, controls.level, version) == ("happy:0.5", 0.3, 1)
    assert board.submit_osc("/emotalk/gain", ["mouth", 1.5], "test") is None
    assert board.submit_osc("/emotalk/gain", ["jaw", 0.5], "test") is None
    assert board.current[0].gains == {"mouth": 1.5, "jaw": 0.5}
    assert board.submit_osc("/emotalk/blink", [0], "test") is None
    assert board.current[1].blink is False
    assert board.submit_json('{"smoothing": 0.05, "person": 4}', "test") is None
    assert board.current[1].smoothing == 0.05 and board.current[0].person == 4
    before = board.current
    bad = [
        lambda: board.submit({"emotion": "ecstatic"}, "t"),
        lambda: board.submit({"level": 7.0}, "t"),
        lambda: board.submit({"level": True}, "t"),
        lambda: board.submit({"person": "3"}, "t"),
        lambda: board.submit({"person": 99}, "t"),
        lambda: board.submit({"gain": {"nose": 2.0}}, "t"),
        lambda: board.submit({"gain": {"mouth": 9.0}}, "t"),
        lambda: board.submit({"smoothing": -1}, "t"),
        lambda: board.submit({"blink": 1}, "t"),
        lambda: board.submit({"volume": 3}, "t"),
        lambda: board.submit({"level": 0.9, "person": -1}, "t"),  # all or nothing
        lambda: board.submit_osc("/emotalk/gain", ["mouth"], "t"),
        lambda: board.submit_osc("/emotalk/blink", [2], "t"),
        lambda: board.submit_osc("/other/thing", [1], "t"),
        lambda: board.submit_json("{not json", "t"),
        lambda: board.submit_json("[1, 2]", "t"),
        lambda: board.submit_json("{}", "t"),
        lambda: board.submit_json('{"emotion": "' + "x" * 5000 + '"}', "t"),
        lambda: board.submit_json(b"\xff\xfe", "t"),
    ]
    for attempt in bad:
        assert isinstance(attempt(), str)
    assert board.current == before
    assert board.refused == len(bad)


def test_bad_command_line_controls_fail_before_streaming(engine: Engine) -> None:
    with pytest.raises(UserError, match="person"):
        ControlBoard(engine, Controls(person=30), FaceSettings())


@pytest.mark.parametrize("text, expected", [("127.0.0.1:9000", ("127.0.0.1", 9000)),
                                            ("localhost:1", ("localhost", 1)), ("[::1]:39539", ("::1", 39539))])
def test_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, "--osc") == expected


@pytest.mark.parametrize("text", ["9000", "127.0.0.1", "127.0.0.1:", ":9000", "host:0", "host:65536", "host:abc"])
def test_bad_addresses_name_the_option_and_an_example(text: str) -> None:
    with pytest.raises(UserError, match=r"--osc .*127\.0\.0\.1:9000"):
        parse_address(text, "--osc")


def test_the_widest_healthy_status_line_shows_every_part_in_80_columns() -> None:
    """60 fps, a three-digit latency, digital silence, the longest emotion label, a few clients."""
    parts = status_parts(60.0, (120.0, 250.0), None, -100.0, "surprised (voice)", 3, 0, 0, {})
    line = fit(parts, 79)
    assert line == "60 fps | latency 120/250 ms | -100 dBFS | emotion surprised (voice) | 3 clients"
    assert len(line) <= 79


def test_on_a_narrow_terminal_the_rate_latency_and_failures_stay() -> None:
    """Everything at its widest and failing at once: the least needed parts give way, the failing
    receiver is still named (shortened), and nothing wraps."""
    errors = {"livelink my-unreal-workstation.local:11111": 120, "record /home/someone/takes/2026/take-07.csv": 3}
    parts = status_parts(60.0, (1200.0, 2500.0), None, -100.0, "surprised (voice)", 12, 99999, 9999, errors)
    line = fit(parts, 79)
    assert line == "60 fps | latency 1200/2500 ms | send errors 123 (livelink ....local:11111 +1)"
    assert fit(parts, 200).endswith("| drops 99999 | overruns 9999 | send errors 123 (livelink ....local:11111 +1)")


def test_input_faster_than_real_time_shows_its_speed_instead_of_a_latency() -> None:
    parts = status_parts(354.0, (2781.0, 2803.0), 11.8, -20.0, "calm", None, 0, 0, {})
    assert fit(parts, 79) == "354 fps | 11.8x real time | -20 dBFS | emotion calm"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_status_line_is_erased_at_the_end_and_no_later_line_redraws_it() -> None:
    out = FakeTerminal()
    console = Console(out)
    log = logging.getLogger("test_streamer_core.console")
    log.addHandler(console)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        console.status([("30 fps", 0), ("latency 84/95 ms", 1)])
        log.warning("a receiver failed")  # the status line makes way and comes back under it
        console.end_status()
        log.info("record take.npy: 150 frames recorded")
        log.info("stopped: 150 frames")
    finally:
        log.removeHandler(console)
    assert out.getvalue() == ("30 fps | latency 84/95 ms"
                              "\r\x1b[Kemotalk-stream: warning: a receiver failed\n30 fps | latency 84/95 ms"
                              "\r\x1b[K"
                              "emotalk-stream: record take.npy: 150 frames recorded\nemotalk-stream: stopped: 150 frames\n")
