"""The TensorRT backend against the torch reference: same frames, whatever the precision or slot order.

Needs TensorRT 10, pycuda and a CUDA GPU; skipped with the reason elsewhere. Until these tests have
run on a GPU, engine/tensorrt_backend.py is unverified.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emotalk_stream.engine.onnx_export import export_artifact
from emotalk_stream.engine.engine import Controls, Engine, Stream
from emotalk_stream.training.audio import read_audio
from emotalk_stream.training.checkpoint import load_model

UNVERIFIED = "TensorRT 10 is not installed here (NVIDIA's index is unreachable); the backend is unverified"
pytest.importorskip("tensorrt", reason=UNVERIFIED)
pytest.importorskip("pycuda.driver", reason=UNVERIFIED, exc_type=ImportError)  # ImportError: no libcuda
if not torch.cuda.is_available():
    pytest.skip("no CUDA device here: the TensorRT backend needs an NVIDIA GPU", allow_module_level=True)

pytestmark = pytest.mark.gpu

SAMPLE = Path(__file__).resolve().parent.parent / "training" / "assets" / "sample.wav"
CONTROLS = Controls(level=0.3, person=5)
HOP_MS, LOOKAHEAD_MS = 20, 40


@pytest.fixture(scope="module")
def model():
    return load_model("default")


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    audio = read_audio(SAMPLE)
    return [audio, audio[16000:56000], audio[:23456]]


@pytest.fixture(scope="module")
def reference(model) -> Engine:
    return Engine.from_checkpoint(model, backend="torch", hop_ms=HOP_MS, lookahead_ms=LOOKAHEAD_MS)


def export(model, folder: Path, fp16: bool) -> Path:
    export_artifact(model, "test", folder, "tensorrt", HOP_MS, LOOKAHEAD_MS, fp16=fp16, max_streams=8)
    return folder


@pytest.fixture(scope="module")
def fp32_artifact(model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(model, tmp_path_factory.mktemp("trt_fp32"), fp16=False)


def max_difference(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    assert [g.shape for g in got] == [w.shape for w in want]
    return max(float(np.abs(g - w).max()) for g, w in zip(got, want))


def test_fp32_plan_matches_torch(fp32_artifact: Path, clips, reference: Engine) -> None:
    engine = Engine.from_artifact(fp32_artifact)
    assert engine.backend.name == "tensorrt"
    d = max_difference(engine.process(clips, CONTROLS), reference.process(clips, CONTROLS))
    assert d <= 1e-3, d


def test_fp16_plan_stays_close_to_torch(model, clips, reference: Engine, tmp_path: Path) -> None:
    engine = Engine.from_artifact(export(model, tmp_path, fp16=True))
    d = max_difference(engine.process(clips, CONTROLS), reference.process(clips, CONTROLS))
    print(f"fp16 max abs diff {d:.2e}")
    assert d <= 0.05, d


def frames(stream: Stream) -> np.ndarray:
    return np.stack([f.weights for f in stream.frames()])


def out_of_order(engine: Engine, clips: list[np.ndarray]) -> list[np.ndarray]:
    """Three streams; the middle one closes mid-clip, so the other two step as slots 0 and 2 (not
    consecutive) until a new stream takes slot 1 with fresh state beside them."""
    first, middle, last = (engine.create_stream(CONTROLS) for _ in range(3))
    first.accept_waveform(engine.sample_rate, clips[0])
    middle.accept_waveform(engine.sample_rate, clips[1][:8000])
    last.accept_waveform(engine.sample_rate, clips[2])
    for _ in range(10):
        engine.step([first, middle, last])
    middle.close()
    for _ in range(10):
        engine.step([first, last])
    new = engine.create_stream(CONTROLS)
    assert (first.slot, new.slot, last.slot) == (0, 1, 2)
    new.accept_waveform(engine.sample_rate, clips[1])
    streams = [first, new, last]
    for stream in streams:
        stream.input_finished()
    while not all(s.done for s in streams):
        engine.step(streams)
    result = [frames(s) for s in streams]
    for stream in streams:
        stream.close()
    return result


def test_streams_out_of_slot_order_match_torch(fp32_artifact: Path, clips, model) -> None:
    reference = Engine.from_checkpoint(model, backend="torch", hop_ms=HOP_MS, lookahead_ms=LOOKAHEAD_MS)
    d = max_difference(out_of_order(Engine.from_artifact(fp32_artifact), clips), out_of_order(reference, clips))
    assert d <= 1e-3, d
