"""A failure of the backend on one stream of a batch stays with that stream."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from emotalk_stream.engine import Engine
from emotalk_stream.engine.backends import Backend
from emotalk_stream.training.audio import read_audio

SAMPLE = Path(__file__).resolve().parent.parent / "training" / "assets" / "sample.wav"


class PoisonedSlot(Backend):
    """The real backend, except that any batch holding `slot` fails from step `after` on: a fault
    injected where no real backend fails on demand (a GPU running out of memory, a driver error)."""

    def __init__(self, real: Backend, slot: int, after: int):
        self.real, self.slot, self.after, self.calls = real, slot, after, 0
        self.name, self.interface, self.max_batch = real.name, real.interface, real.max_batch

    def _allocate(self, capacity: int) -> None:
        self.real._allocate(capacity)

    def reset(self, slot: int) -> None:
        self.real.reset(slot)

    def spare(self) -> Backend:
        return self.real.spare()

    def run(self, slots: np.ndarray, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.calls > self.after and self.slot in slots.tolist():
            raise RuntimeError(f"injected failure on slot {self.slot}")
        return self.real.run(slots, inputs)


def test_one_failing_stream_does_not_take_down_the_batch() -> None:
    engine = Engine.load("default")
    speech = read_audio(SAMPLE)
    clips = [speech[:3 * 16000], speech[16000:4 * 16000], speech[2 * 16000:]]
    expected = engine.process(clips)
    streams = [engine.create_stream() for _ in clips]
    engine.backend = PoisonedSlot(engine.backend, streams[1].slot, after=20)
    for stream, clip in zip(streams, clips):
        stream.accept_waveform(16000, clip)
        stream.input_finished()
    while not all(s.done for s in streams):
        engine.step(streams)
    assert streams[1].error == "RuntimeError: injected failure on slot 1" and streams[1].done
    for i in (0, 2):
        assert streams[i].error is None
        got = np.stack([f.weights for f in streams[i].frames()])
        np.testing.assert_allclose(got, expected[i], atol=1e-5)  # every hop decoded once, in order
    assert 0 < streams[1].frames_decoded < len(expected[1])
