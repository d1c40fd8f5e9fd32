"""Audio sources: the ring buffer, a paced and an unpaced file, raw PCM from real pipes, and a
microphone recorded from a private PulseAudio server."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emotalk_stream.streamer.resample import StreamingResampler
from emotalk_stream.streamer.sources import RingBuffer, Source, StdinSource, WavSource
from emotalk_stream.training.audio import read_audio
from emotalk_stream.training.errors import UserError
from virtual_mic import VirtualMicrophone, virtual_microphone

SAMPLE = Path(__file__).resolve().parents[1] / "training" / "assets" / "sample.wav"


def read_until_finished(source: Source, limit_s: float = 30.0) -> list[tuple[np.ndarray, float]]:
    """Every chunk with the time it was handed out."""
    chunks = []
    deadline = time.monotonic() + limit_s
    while not source.finished:
        assert time.monotonic() < deadline, "the source never finished"
        chunk = source.read(0.5)
        if chunk is not None:
            chunks.append((chunk, time.monotonic()))
    return chunks


# ---------------------------------------------------------------- ring buffer

def block(frames: int, start: float, channels: int = 2) -> np.ndarray:
    return (start + np.arange(frames * channels, dtype=np.float32).reshape(frames, channels))


def test_ring_buffer_drops_and_counts_a_block_that_does_not_fit_and_wraps_around() -> None:
    ring = RingBuffer(100, channels=2)
    first, second, third = block(40, 0), block(40, 1000), block(40, 2000)
    ring.write(first)
    ring.write(second)
    ring.write(third)  # 120 > 100: dropped
    assert ring.overruns == 1 and ring.written == 80
    np.testing.assert_array_equal(ring.read_all(), np.concatenate([first, second]))
    ring.write(third)  # frames 80..119 wrap around the end of the array
    assert ring.overruns == 1
    np.testing.assert_array_equal(ring.read_all(), third)
    assert ring.read_all().shape == (0, 2)


def test_ring_buffer_stamps_answer_when_a_frame_arrived() -> None:
    ring = RingBuffer(1000, channels=1, stamps=4)
    times = []
    for i in range(3):
        before = time.monotonic()
        ring.write(block(10, i, channels=1))
        times.append((before, time.monotonic()))
    for frame, (before, after) in [(0, times[0]), (9, times[0]), (10, times[1]), (29, times[2])]:
        arrived = ring.arrival_time(frame)
        assert arrived is not None and before <= arrived <= after
    assert ring.arrival_time(30) is None  # not written yet
    for i in range(3, 8):
        ring.write(block(10, i, channels=1))
    assert ring.arrival_time(5) is None  # its stamp was overwritten: too old to know
    assert ring.arrival_time(79) is not None


def test_ring_buffer_write_allocates_no_arrays() -> None:
    ring = RingBuffer(48000, channels=2)
    data = block(4800, 0)
    ring.write(data)  # warm up
    ring.read_all()
    tracemalloc.start()
    try:
        for _ in range(9):
            ring.write(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < data.nbytes // 4, f"write allocated {peak} bytes"


def test_ring_buffer_wakes_a_waiting_reader() -> None:
    ring = RingBuffer(100)
    assert not ring.wait(0.01)
    writer = threading.Timer(0.05, ring.write, args=(block(10, 0, channels=1),))
    start = time.monotonic()
    writer.start()
    assert ring.wait(5.0)
    assert time.monotonic() - start < 1.0
    assert len(ring.read_all()) == 10
    writer.join()


# ---------------------------------------------------------------- WAV file

@pytest.fixture
def four_seconds(tmp_path: Path) -> Path:
    """4 s of a sweep at 44.1 kHz stereo, so the file source has to resample and mix down."""
    t = np.arange(4 * 44100) / 44100
    left = 0.5 * np.sin(2 * np.pi * (200 + 300 * t) * t)
    path = tmp_path / "four.wav"
    sf.write(str(path), np.stack([left, 0.5 * left], axis=1).astype(np.float32), 44100, subtype="FLOAT")
    return path


def test_paced_wav_plays_in_real_time(four_seconds: Path) -> None:
    source = WavSource(four_seconds, pace=True)
    assert source.realtime
    with source:
        start = time.monotonic()
        chunks = read_until_finished(source)
        elapsed = time.monotonic() - start
    assert 0.8 * 4 <= elapsed <= 1.5 * 4
    audio = np.concatenate([chunk for chunk, _ in chunks])
    np.testing.assert_array_equal(audio, read_audio(four_seconds))
    assert all(len(chunk) % 160 == 0 for chunk, _ in chunks[:-1])  # whole 10 ms blocks
    assert source.read(0.01) is None
    # A sample arrives when its 10 ms block would have come from a microphone.
    position = 0
    for chunk, handed_out in chunks[::25]:
        arrived = source.arrival_time(position)
        assert arrived is not None and start - 0.05 <= arrived <= handed_out + 1e-3
        assert abs(arrived - (start + (position // 160 + 1) / 100)) < 0.05
        position += len(chunk)


def test_unpaced_wav_is_fast_with_the_same_audio(four_seconds: Path) -> None:
    source = WavSource(four_seconds, pace=False)
    assert not source.realtime
    with source:
        start = time.monotonic()
        chunks = read_until_finished(source)
        elapsed = time.monotonic() - start
    assert elapsed < 1.0
    np.testing.assert_array_equal(np.concatenate([chunk for chunk, _ in chunks]), read_audio(four_seconds))
    arrived = [source.arrival_time(s) for s in (0, 32000, 63999)]
    assert None not in arrived and arrived == sorted(arrived)
    assert start <= arrived[0] and arrived[-1] <= time.monotonic()  # type: ignore[operator]


def test_missing_wav_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        WavSource(tmp_path / "nope.wav").start()


# ---------------------------------------------------------------- raw PCM from a pipe

def expected_16k(interleaved: np.ndarray, channels: int, rate: int) -> np.ndarray:
    mono = np.clip(np.nan_to_num(interleaved.reshape(-1, channels).mean(axis=1), nan=0.0, posinf=0.0,
                                 neginf=0.0), -1, 1).astype(np.float32)
    resampler = StreamingResampler(rate)
    return np.clip(np.concatenate([resampler.process(mono), resampler.flush()]), -1, 1)


def test_s16le_stereo_48k_from_a_pipe_with_split_samples() -> None:
    rng = np.random.default_rng(3)
    pcm = (rng.uniform(-0.5, 0.5, 2 * 48000 * 2) * 32768).astype("<i2")  # 2 s, 2 channels
    payload = pcm.tobytes()
    read_end, write_end = os.pipe()

    def writer() -> None:
        with os.fdopen(write_end, "wb", buffering=0) as pipe:
            for start in range(0, len(payload), 1001):  # odd pieces: samples split across writes
                pipe.write(payload[start:start + 1001])

    thread = threading.Thread(target=writer)
    with open(read_end, "rb", buffering=0) as stream:
        source = StdinSource("s16le", 48000, channels=2, stream=stream)
        assert not source.realtime
        before = time.monotonic()
        with source:
            thread.start()
            audio = np.concatenate([chunk for chunk, _ in read_until_finished(source)])
            after = time.monotonic()
            thread.join()
    assert len(audio) == 2 * 16000
    np.testing.assert_allclose(audio, expected_16k(pcm.astype(np.float32) / 32768, 2, 48000), atol=1e-6)
    first, last = source.arrival_time(0), source.arrival_time(len(audio) - 1)
    assert first is not None and last is not None and before <= first <= last <= after


def test_f32le_48k_from_a_subprocess_is_cleaned_and_resampled(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    samples = rng.uniform(-1, 1, 48000 + 7).astype("<f4")
    samples[[10, 20, 30, 40]] = [np.nan, np.inf, 3.0, -2.0]  # made safe like any file
    raw = tmp_path / "audio.f32"
    raw.write_bytes(samples.tobytes())
    writer = subprocess.Popen(["cat", str(raw)], stdout=subprocess.PIPE)
    assert writer.stdout is not None
    with StdinSource("f32le", 48000, stream=writer.stdout) as source:
        audio = np.concatenate([chunk for chunk, _ in read_until_finished(source)])
    writer.wait()
    assert len(audio) == round((48000 + 7) / 3)
    assert np.abs(audio).max() <= 1.0
    np.testing.assert_allclose(audio, expected_16k(samples, 1, 48000), atol=1e-6)


def test_a_partial_sample_frame_at_the_end_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, np.arange(100, dtype="<i2").tobytes() + b"\x01")
    os.close(write_end)
    with caplog.at_level(logging.WARNING), open(read_end, "rb") as stream:
        with StdinSource("s16le", 16000, stream=stream) as source:
            audio = np.concatenate([chunk for chunk, _ in read_until_finished(source)])
    np.testing.assert_allclose(audio, np.arange(100) / 32768, atol=1e-7)
    assert "ignored its last 1 bytes" in caplog.text


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"fmt": "s24le"}, r"unknown PCM format 's24le': use one of s16le, f32le"),
    ({"rate": 4000}, r"PCM rate 4000 Hz is outside 8000..192000 Hz"),
    ({"rate": 384000}, r"PCM rate 384000 Hz is outside"),
    ({"channels": 0}, r"0 PCM channels: give 1 to 64"),
])
def test_bad_pcm_settings_are_user_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message):
        StdinSource(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- microphone (virtual)

RECORD = """
import json, sys, time
import numpy as np
from emotalk_stream.streamer.sources import MicSource
with MicSource("default") as mic:
    chunks = []
    while not chunks:  # the sound server is streaming: whatever is played now will be heard
        chunk = mic.read(0.5)
        chunks += [] if chunk is None else [chunk]
    print("ready", flush=True)
    start = time.monotonic()
    while time.monotonic() - start < float(sys.argv[2]):
        chunk = mic.read(0.5)
        if chunk is not None:
            chunks.append(chunk)
    audio = np.concatenate(chunks)
    np.save(sys.argv[1], audio)
    first, last = mic.arrival_time(0), mic.arrival_time(len(audio) - 1)
    print(json.dumps({"samples": len(audio), "rms": float(np.sqrt(np.mean(audio ** 2))), "rate": mic.rate,
                      "overruns": mic.overruns, "arrival_span": last - first}), flush=True)
"""

PROBE = """
from emotalk_stream.streamer.sources import MicSource, list_devices
from emotalk_stream.training.errors import UserError
print(list_devices())
try:
    MicSource("no such microphone").start()
except UserError as exc:
    print("ERROR", exc)
"""

UNPLUG = """
import time
from emotalk_stream.streamer.sources import DeviceLost, MicSource
from emotalk_stream.training.errors import UserError


def record(mic, seconds):
    got = 0
    while got < seconds * 16000:  # the stream really runs
        chunk = mic.read(1.0)
        got += 0 if chunk is None else len(chunk)


with MicSource("default") as mic:
    record(mic, 1)
    print("recording", flush=True)
    try:
        while True:
            mic.read(0.5)
    except DeviceLost as exc:
        print("ERROR", exc, flush=True)
    while True:  # until it is plugged back in, the same device opens again and delivers
        try:
            mic.start()
            record(mic, 0.5)
            break
        except UserError:
            time.sleep(0.2)
    print("resumed", flush=True)
"""


@pytest.fixture(scope="module")
def vmic() -> Iterator[VirtualMicrophone]:
    with virtual_microphone() as microphone:
        yield microphone


def python(code: str, vmic: VirtualMicrophone, *args: str) -> subprocess.Popen[str]:
    """PortAudio reads PULSE_SERVER only when it starts: record in a process of its own."""
    return subprocess.Popen([sys.executable, "-c", code, *args], env=vmic.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def envelope(audio: np.ndarray, frame: int = 320) -> np.ndarray:
    frames = audio[:len(audio) // frame * frame].reshape(-1, frame).astype(np.float64)
    return np.sqrt(np.mean(frames ** 2, axis=1))


def test_microphone_records_what_is_played_into_it(vmic: VirtualMicrophone, tmp_path: Path) -> None:
    out = tmp_path / "recorded.npy"
    recorder = python(RECORD, vmic, str(out), "7.5")
    assert recorder.stdout is not None
    assert recorder.stdout.readline().strip() == "ready", recorder.stderr.read()  # type: ignore[union-attr]
    player = vmic.play(SAMPLE)
    stdout, stderr = recorder.communicate(timeout=60)
    assert player.wait(30) == 0
    assert recorder.returncode == 0, stderr
    report = json.loads(stdout.strip().splitlines()[-1])
    recorded = np.load(out)
    assert recorded.dtype == np.float32 and len(recorded) == report["samples"]
    assert 7.4 * 16000 <= len(recorded) <= 7.7 * 16000
    # 16 kHz against the clock: the samples cover as much time as their arrival stamps span.
    assert abs(report["arrival_span"] * 16000 / len(recorded) - 1) < 0.05
    assert report["overruns"] == 0
    # The speech arrived, at its level, somewhere after the start of the recording.
    speech = read_audio(SAMPLE)
    played, heard = envelope(speech), envelope(recorded)
    assert len(heard) > len(played)
    scores = [np.corrcoef(played, heard[lag:lag + len(played)])[0, 1] for lag in range(len(heard) - len(played))]
    lag = int(np.argmax(scores))
    assert scores[lag] > 0.9, f"best envelope correlation {scores[lag]:.2f} at {lag * 20} ms"
    aligned = recorded[lag * 320:lag * 320 + len(speech)]
    level = np.sqrt(np.mean(aligned.astype(np.float64) ** 2)) / np.sqrt(np.mean(speech.astype(np.float64) ** 2))
    assert 0.8 < level < 1.25
    assert report["rms"] > 0.02  # speech level, not noise


def test_device_list_and_an_unknown_name(vmic: VirtualMicrophone) -> None:
    stdout, stderr = python(PROBE, vmic).communicate(timeout=60)
    table, _, error = stdout.partition("ERROR ")
    assert "default" in table and "* = the default microphone" in table
    rows = [line for line in table.splitlines() if line.strip()[:1] in "*0123456789" and "Hz" in line]
    assert len(rows) >= 1 and any(line.lstrip().startswith("*") for line in rows)
    assert error.startswith("no input device matches 'no such microphone' (input devices: ")
    assert "'default'" in error and "--list-devices" in error and error.count("\n") == 1


def test_an_unplugged_microphone_is_reported_and_opens_again(vmic: VirtualMicrophone) -> None:
    recorder = python(UNPLUG, vmic)
    assert recorder.stdout is not None
    try:
        assert recorder.stdout.readline().strip() == "recording"
        vmic.unload_source()
        lost = recorder.stdout.readline()
        vmic.load_source()
        stdout, stderr = recorder.communicate(timeout=30)
    finally:
        recorder.kill()
    assert lost.startswith("ERROR microphone 'default' (device ") and " stopped: " in lost
    assert stdout.strip() == "resumed", stderr
