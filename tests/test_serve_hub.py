"""The session hub of emotalk-serve: many sessions on the bundled engine, batched, each with the
streamer's frames, and none able to hold back or break another."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.engine import Controls, Engine
from emotalk_stream.serve import hub as hub_module
from emotalk_stream.serve.hub import Session, SessionHub, SessionRefused
from emotalk_stream.streamer.cli import main as stream_main
from emotalk_stream.streamer.face import FaceSettings
from emotalk_stream.streamer.frames import OutFrame
from emotalk_stream.training.audio import read_audio
from emotalk_stream.training.blendshapes import COUNT, REGIONS
from emotalk_stream.training.errors import UserError

SAMPLE = Path(__file__).resolve().parent.parent / "training" / "assets" / "sample.wav"
AUDIO = read_audio(SAMPLE)  # 5 s of real speech at 16 kHz
RATE = 16000
FPS = 30


def run(engine: Engine, body: Callable[[SessionHub], Awaitable[object]], **options: object) -> object:
    """`body(hub)` on a started hub, stopped afterwards; 30 s at most."""
    async def main() -> object:
        hub = SessionHub(engine, **options)
        await hub.start()
        try:
            return await asyncio.wait_for(body(hub), 30)
        finally:
            await hub.stop()
    return asyncio.run(main())


async def read_all(session: Session) -> list[OutFrame]:
    return [frame async for frame in session.frames()]


def feed(session: Session, audio: np.ndarray, block: int = 320) -> None:
    for start in range(0, len(audio), block):
        session.feed(audio[start:start + block])


def check_stream(frames: list[OutFrame], seconds: float) -> None:
    """Every frame of `seconds` of audio in order at its audio time, then one final neutral frame."""
    count = -(-round(seconds * 16000) * FPS // 16000)  # ceil(N x fps) of the 16 kHz samples, as offline
    assert [f.index for f in frames] == list(range(count + 1))
    assert all(f.time == pytest.approx(f.index / FPS) and f.fps == FPS for f in frames)
    assert [f.final for f in frames] == [False] * count + [True]
    assert not frames[-1].weights.any() and frames[-1].weights.shape == (COUNT,)
    assert all(f.emotion is not None for f in frames[:-1])


def test_sessions_are_decoded_together_in_batched_steps(engine: Engine) -> None:
    clips = [AUDIO[:2 * RATE], AUDIO[RATE:3 * RATE], AUDIO[2 * RATE:4 * RATE]]

    async def body(hub: SessionHub) -> tuple[list[list[OutFrame]], dict]:
        sessions = [hub.open() for _ in clips]
        for session, clip in zip(sessions, clips):
            feed(session, clip)
            session.finish()
        streams = await asyncio.gather(*(read_all(s) for s in sessions))
        return streams, hub.stats()

    streams, stats = run(engine, body)
    for frames in streams:
        check_stream(frames, 2.0)
    hops = 2 * RATE // engine.hop_samples
    # 3 x 100 hops of audio: one step per hop of all three together (plus the tails), not one per hop each.
    assert hops <= stats["steps"] <= hops + 10, stats
    assert stats["frames"] == 3 * 61 and stats["sessions"] == 0 and stats["dropped"] == 0
    # Different audio, different faces (the sessions do not share state).
    assert np.abs(streams[0][40].weights - streams[1][40].weights).max() > 0.01


def test_frames_equal_what_emotalk_stream_records_from_the_file(engine: Engine, tmp_path: Path) -> None:
    recorded = tmp_path / "offline.npy"
    assert stream_main(["--wav", str(SAMPLE), "--no-pace", "--record", str(recorded), "--quiet"]) == 0
    offline = np.load(recorded)

    async def body(hub: SessionHub) -> list[OutFrame]:
        session = hub.open()
        reader = asyncio.create_task(read_all(session))
        for start in range(0, len(AUDIO), 777):  # blocks off the hop grid, with the loop running between
            session.feed(AUDIO[start:start + 777])
            await asyncio.sleep(0)
        session.finish()
        return await reader

    frames = run(engine, body)  # the hub's first session blinks with the streamer's default seed, 0
    check_stream(frames, len(offline) / FPS)
    served = np.stack([f.weights for f in frames[:-1]])
    assert served[:, list(REGIONS["jaw"])].max() > 0.1  # real speech moved the jaw
    np.testing.assert_allclose(served, offline, atol=1e-5)


def test_a_session_that_does_not_read_is_dropped_without_holding_back_another(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "STALL_S", 2.0)

    async def body(hub: SessionHub) -> tuple[Session, list[OutFrame], dict]:
        stalled, reading = hub.open(), hub.open()
        feed(stalled, AUDIO[:2 * RATE])  # 60 frames for a queue of 8: it fills and stays full
        reader = asyncio.create_task(read_all(reading))
        feed(reading, AUDIO[:2 * RATE])
        reading.finish()
        frames = await reader
        assert stalled.error is None  # the reading session finished well within the stall time
        while stalled.error is None:
            await asyncio.sleep(0.05)
        return stalled, frames, hub.stats()

    stalled, frames, stats = run(engine, body, frame_queue=8)
    check_stream(frames, 2.0)
    assert stalled.error == "stopped reading frames (8 waiting for 2 s)"
    assert stats["dropped"] == 1 and stats["sessions"] == 0


def test_beyond_max_streams_a_session_is_refused_with_its_reason(engine: Engine) -> None:
    async def body(hub: SessionHub) -> None:
        first, _ = hub.open(), hub.open()
        with pytest.raises(SessionRefused) as refused:
            hub.open()
        assert refused.value.reason == "server full (2 of 2 sessions): try again later"
        assert hub.stats()["refused"] == 1
        first.close("client gone")
        third = hub.open()  # the closed session's place is free again
        feed(third, AUDIO[:RATE])
        third.finish()
        check_stream(await read_all(third), 1.0)

    run(engine, body, max_streams=2)


def test_controls_change_mid_session_and_bad_ones_are_refused(engine: Engine) -> None:
    silenced = Controls(gains={"jaw": 0.0, "mouth": 0.0})

    async def body(hub: SessionHub) -> list[OutFrame]:
        session = hub.open(Controls(emotion="happy:0.5"))
        frames: list[OutFrame] = []
        feed(session, AUDIO[:2 * RATE])
        async for frame in session.frames():  # the frames of the first 2 s are decoded with the first controls
            frames.append(frame)
            if frame.index == 55:
                break
        for bad in ({"controls": Controls(person=999)}, {"controls": Controls(gains={"ears": 1.0})},
                    {"face": FaceSettings(smoothing=5.0)}):
            with pytest.raises(UserError):
                session.set_controls(**bad)
            assert session.controls == Controls(emotion="happy:0.5") and session.face == FaceSettings()
        session.set_controls(silenced, FaceSettings(blink=False))
        assert session.controls == silenced and session.face == FaceSettings(blink=False)
        feed(session, AUDIO[2 * RATE:])
        session.finish()
        return frames + await read_all(session)

    frames = run(engine, body)
    check_stream(frames, len(AUDIO) / RATE)
    lower = list(REGIONS["jaw"]) + list(REGIONS["mouth"])
    before, after = np.stack([f.weights for f in frames[:55]]), np.stack([f.weights for f in frames[62:-1]])
    assert before[:, lower].max() > 0.1
    assert after[:, lower].max() == 0.0


def test_one_session_failing_in_the_engine_does_not_disturb_the_others(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    run_step = engine.backend.run

    def failing(slots: np.ndarray, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if inputs["person"][:, 23].any():  # the session with person 23 is the one the backend cannot run
            raise RuntimeError("injected failure")
        return run_step(slots, inputs)

    monkeypatch.setattr(engine.backend, "run", failing)

    async def body(hub: SessionHub) -> tuple[list[list[OutFrame]], Session]:
        sessions = [hub.open(Controls(person=p)) for p in (0, 23, 5)]
        for session in sessions:
            feed(session, AUDIO[:2 * RATE])
            session.finish()
        return await asyncio.gather(*(read_all(s) for s in sessions)), sessions[1]

    (good, failed, other), broken = run(engine, body)
    check_stream(good, 2.0)
    check_stream(other, 2.0)
    assert failed == [] or not failed[-1].final
    assert "injected failure" in broken.error


def test_stop_gives_every_session_its_remaining_frames_and_the_final_one(engine: Engine) -> None:
    async def main() -> tuple[list[OutFrame], dict[str, float] | None]:
        hub = SessionHub(engine)
        await hub.start()
        session = hub.open()
        reader = asyncio.create_task(read_all(session))
        feed(session, AUDIO[:RATE])  # no finish(): the server stops mid-session
        await asyncio.sleep(0.2)
        await hub.stop()
        with pytest.raises(SessionRefused, match="shutting down"):
            hub.open()
        return await asyncio.wait_for(reader, 5), session.emotion_probabilities()

    frames, emotion = asyncio.run(main())
    check_stream(frames, 1.0)
    assert set(emotion) == set(engine.cfg.emotion_labels) and sum(emotion.values()) == pytest.approx(1.0, abs=1e-4)


def test_audio_after_the_end_of_input_is_refused(engine: Engine) -> None:
    async def body(hub: SessionHub) -> None:
        session = hub.open()
        session.finish()
        with pytest.raises(UserError, match="after the end of input"):
            session.feed(AUDIO[:320])
        assert [f.final for f in await read_all(session)] == [True]  # no audio: only the final frame

    run(engine, body)
