"""`emotalk-latency`: end-to-end latency of the streamer, from a sound reaching the ring buffer to
the packet leaving for the receiver, measured with speech onsets injected at known samples.

The signal is espeak-ng words that start with a bilabial ("Papa", "Bob", ...) after 0.8-1.4 s of
room noise; the onset is the first sample of each word. It is played in real time through the
paced WAV source (the microphone's path from its ring buffer on), streamed by the real pipeline to
an OSC receiver on loopback (`--osc-format arkit`, which carries each frame's audio time), and
timed on one monotonic clock:

- `frame_latency_ms`: every frame, receive time minus the time its audio (frame time) arrived;
- `onset_frame_ms`: per onset, the first packet whose frame shows the onset;
- `onset_response_ms`: per onset, the first packet whose jawOpen has risen by 0.1 over the
  silence before it: what a viewer sees, including how fast the model reacts.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import ThreadingOSCUDPServer
from torchaudio.functional import resample

from ..engine import Controls, Engine
from ..streamer.controls import ControlBoard
from ..streamer.face import FaceSettings
from ..streamer.osc_sink import ARKIT_ADDRESS, OscSink
from ..streamer.pipeline import Streamer
from ..streamer.sources import WavSource
from ..training.audio import SAMPLE_RATE, write_wav
from ..training.framing import frame_count
from ..training.blendshapes import INDEX
from ..training.errors import UserError, add_debug_flag, run_cli
from ..training.espeak import Voice, default_espeak

PROG = "emotalk-latency"
WORDS = ("Papa", "Bob", "Mama", "Baby", "Pop", "Map", "Bump", "Pipe")
ONSET_THRESHOLD = 0.02  # |sample| that counts as the word's first sound
JAW_RISE = 0.1
NOISE_DBFS = -60.0


def onset_signal(onsets: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Words after room noise, 16 kHz mono, and the sample where each word starts."""
    rng = np.random.default_rng(seed)
    espeak = default_espeak()
    parts, starts, length = [], [], 0
    for k in range(onsets):
        gap = int(rng.uniform(0.8, 1.4) * SAMPLE_RATE)
        synth = espeak.synthesize(WORDS[k % len(WORDS)], Voice("en-us"), seed=k)
        word = resample(torch.from_numpy(synth.samples.astype(np.float32) / 32768), synth.sample_rate, SAMPLE_RATE).numpy()
        word = word[np.argmax(np.abs(word) > ONSET_THRESHOLD):]
        parts += [np.zeros(gap, np.float32), word]
        starts.append(length + gap)
        length += gap + len(word)
    parts.append(np.zeros(SAMPLE_RATE, np.float32))
    audio = np.concatenate(parts)
    audio += (10 ** (NOISE_DBFS / 20) * rng.standard_normal(len(audio))).astype(np.float32)
    return audio, starts


class Receiver:
    """A python-osc server on loopback that timestamps every /emotalk/arkit packet."""

    def __init__(self) -> None:
        self.packets: list[tuple[float, int, float, float]] = []  # (received, index, time, jawOpen)
        dispatcher = Dispatcher()
        dispatcher.map(ARKIT_ADDRESS, self._on_frame)
        self.server = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _on_frame(self, _address: str, index: int, seconds: float, *weights: float) -> None:
        self.packets.append((time.monotonic(), index, seconds, weights[INDEX["jawOpen"]]))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1)}


def measure(engine: Engine, onsets: int, fps: int, seed: int) -> dict[str, Any]:
    audio, starts = onset_signal(onsets, seed)
    receiver = Receiver()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "onsets.wav"
        write_wav(path, audio)
        source = WavSource(path, pace=True)
        board = ControlBoard(engine, Controls(), FaceSettings(blink=False))
        sink = OscSink("127.0.0.1", receiver.port, "arkit")
        sink.open()
        Streamer(source, engine, board, [sink], fps).run(threading.Event())
        time.sleep(0.2)  # the last datagrams on loopback
        receiver.close()
        arrival = source.arrival_time
        packets = sorted(receiver.packets, key=lambda p: p[1])
        frame_ms = [1000 * (got - arrival(round(t * SAMPLE_RATE))) for got, _, t, _ in packets
                    if arrival(round(t * SAMPLE_RATE)) is not None]
        onset_frame, onset_response = [], []
        for start in starts:
            onset_time, arrived = start / SAMPLE_RATE, arrival(start)
            after = [p for p in packets if p[2] >= onset_time]
            before = [p[3] for p in packets if onset_time - 0.3 <= p[2] < onset_time - 0.1]
            if arrived is None or not after:
                continue
            onset_frame.append(1000 * (after[0][0] - arrived))
            rest = max(before, default=0.0)
            rising = [p for p in packets if p[2] >= onset_time - 0.1 and p[3] >= rest + JAW_RISE]
            if rising:
                onset_response.append(1000 * (rising[0][0] - arrived))
    return {"backend": engine.backend.name, "hop_ms": engine.hop_ms, "lookahead_ms": engine.lookahead_ms, "fps": fps,
            "frames": len(packets), "expected_frames": frame_count(len(audio), SAMPLE_RATE, fps),
            "onsets": len(starts), "onsets_responded": len(onset_response),
            "frame_latency_ms": percentiles(frame_ms), "onset_frame_ms": percentiles(onset_frame),
            "onset_response_ms": percentiles(onset_response)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Measure the streamer's end-to-end latency with injected speech onsets.")
    p.add_argument("--model", default="default", help="'default' or a checkpoint folder (torch backend)")
    p.add_argument("--engine", type=Path, help="an exported engine artifact instead of --model")
    p.add_argument("--lookahead-ms", type=int, help="with --model: look-ahead (default: the model's)")
    p.add_argument("--onsets", type=int, default=20, help="words to time (default 20; about 1.6 s each)")
    p.add_argument("--fps", type=int, choices=(30, 60), default=30, help="the streamer's output rate (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pauses between the words (default 0)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for the engine (default 1)")
    add_debug_flag(p)
    return p


def _run(args: argparse.Namespace) -> None:
    if args.onsets < 1:
        raise UserError("--onsets must be at least 1")
    if args.engine:
        engine = Engine.from_artifact(args.engine, threads=args.threads)
    else:
        engine = Engine.load(args.model, lookahead_ms=args.lookahead_ms, threads=args.threads)
    print(json.dumps(measure(engine, args.onsets, args.fps, args.seed), indent=2))


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, _run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
