"""The voice-activity gate (engine/voice_activity.py, vendored Silero VAD) on real speech and noise:
speech scores high, silence and noise low; the mouth gate is closed in silence and noise and open in
speech; blockwise, batched and streaming runs equal the one-shot offline run; no PyTorch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emotalk_stream.engine.voice_activity import (
    CHUNK, MODEL_PATH, SAMPLE_RATE, VoiceActivity, VoiceActivityModel, advance_all, mouth_gate,
)
from emotalk_stream.training.audio import read_audio
from emotalk_stream.training.errors import UserError
from emotalk_stream.training.model_files import SAMPLE_SPEECH

ALSA = Path("/usr/share/sounds/alsa")
SPEECH_RECORDING = ALSA / "Front_Center.wav"  # a real voice saying "front centre" (48 kHz)
NOISE_RECORDING = ALSA / "Noise.wav"  # a real recording of noise only
FPS = 30
LOOKAHEAD = 0.040  # what the engine passes: frame time + its default look-ahead (2 x 20 ms)
NOISE_DBFS = -30.0


@pytest.fixture(scope="module")
def model() -> VoiceActivityModel:
    return VoiceActivityModel()


def _speech_clips() -> list[np.ndarray]:
    clips = [read_audio(SAMPLE_SPEECH)]
    if SPEECH_RECORDING.is_file():
        clips.append(read_audio(SPEECH_RECORDING))
    return clips


def _white_noise(seconds: float, seed: int = 0) -> np.ndarray:
    rms = 10 ** (NOISE_DBFS / 20)
    return (np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)) * rms).astype(np.float32)


def _run(model: VoiceActivityModel, audio: np.ndarray) -> np.ndarray:
    detector = VoiceActivity(model)
    detector.accept(audio)
    detector.finish()
    return np.array(detector.probabilities)


def _voiced_chunks(audio: np.ndarray) -> np.ndarray:
    """Chunks within 20 dB of the clip's loudest chunk: the voiced middle of a clean recording."""
    n = len(audio) // CHUNK
    rms = np.sqrt((audio[:n * CHUNK].reshape(n, CHUNK).astype(np.float64) ** 2).mean(axis=1))
    level = 20 * np.log10(rms + 1e-12)
    return level > level.max() - 20


def _frame_times(audio: np.ndarray) -> np.ndarray:
    return np.arange(int(len(audio) / SAMPLE_RATE * FPS)) / FPS


def test_speech_scores_high_in_its_voiced_middle(model: VoiceActivityModel) -> None:
    for audio in _speech_clips():
        probabilities = _run(model, audio)
        assert len(probabilities) == -(-len(audio) // CHUNK)
        voiced = probabilities[:len(_voiced_chunks(audio))][_voiced_chunks(audio)]
        assert voiced.size >= 15
        assert np.median(voiced) > 0.95
        assert np.mean(voiced > 0.5) > 0.9  # a chunk at a voice onset may lag behind


def test_silence_and_noise_score_low(model: VoiceActivityModel) -> None:
    assert _run(model, np.zeros(3 * SAMPLE_RATE, np.float32)).max() < 0.05
    assert _run(model, _white_noise(3.0)).max() < 0.15
    if not NOISE_RECORDING.is_file():
        pytest.skip(f"{NOISE_RECORDING} is absent: the recorded-noise half of this test did not run")
    noise = read_audio(NOISE_RECORDING)
    assert np.sqrt(np.mean(noise ** 2)) > 0.01  # it really is audible noise
    assert _run(model, noise).max() < 0.15


def test_gate_closed_in_silence_and_noise(model: VoiceActivityModel) -> None:
    signals = [np.zeros(2 * SAMPLE_RATE, np.float32), _white_noise(2.0, seed=1)]
    if NOISE_RECORDING.is_file():
        signals.append(read_audio(NOISE_RECORDING))
    for audio in signals:
        times = _frame_times(audio)
        gate = mouth_gate(_run(model, audio), times, times + LOOKAHEAD)
        assert gate.shape == times.shape and gate.dtype == np.float32
        assert np.all(gate == 0.0)


def test_gate_open_inside_speech_and_closed_soon_after(model: VoiceActivityModel) -> None:
    for speech in _speech_clips():
        audio = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), speech, np.zeros(SAMPLE_RATE, np.float32)])
        probabilities = _run(model, audio)
        times = _frame_times(audio)
        gate = mouth_gate(probabilities, times, times + LOOKAHEAD)
        assert np.all((gate >= 0) & (gate <= 1))
        current = probabilities[(times * SAMPLE_RATE).astype(int) // CHUNK]  # the chunk under each frame
        assert np.all(gate[current >= 0.5] == 1.0)
        voiced_chunks = _voiced_chunks(audio)
        voiced = voiced_chunks[np.minimum((times * SAMPLE_RATE).astype(int) // CHUNK, len(voiced_chunks) - 1)]
        assert np.mean(gate[voiced] == 1.0) > 0.9
        assert np.all(gate[times < 0.4] == 0.0)  # leading silence
        loud = np.nonzero(np.abs(audio) > 0.01)[0]
        voice_end = loud[-1] / SAMPLE_RATE  # last sample above -40 dBFS, breath and room tail included
        assert np.all(gate[times > voice_end + 0.25] == 0.0)


def test_blocks_of_any_size_give_byte_identical_probabilities(model: VoiceActivityModel) -> None:
    audio = np.concatenate([*_speech_clips(), _white_noise(0.7, seed=2), np.zeros(777, np.float32)])
    whole = _run(model, audio)
    rng = np.random.default_rng(3)
    for trial in range(3):
        detector = VoiceActivity(model)
        position = 0
        while position < len(audio):
            size = int(rng.choice([1, 63, 511, 512, 513, 1000, 2048, 4999]) if trial < 2 else rng.integers(0, 3000))
            detector.accept(audio[position:position + size], run=bool(rng.integers(0, 2)) or trial == 0)
            position += size
        detector.finish()
        assert detector.probabilities.tobytes() == whole.tobytes()


def test_batched_streams_equal_each_alone(model: VoiceActivityModel) -> None:
    clips = _speech_clips()
    signals = [clips[0], clips[-1][::-1].copy(), _white_noise(2.3, seed=4)]
    alone = [_run(model, s) for s in signals]
    detectors = [VoiceActivity(model) for _ in signals]
    positions = [0] * len(signals)
    rng = np.random.default_rng(5)
    calls = 0
    while any(p < len(s) for p, s in zip(positions, signals)):
        for i, (detector, signal) in enumerate(zip(detectors, signals)):
            size = int(rng.integers(100, 3000))
            detector.accept(signal[positions[i]:positions[i] + size], run=False)
            positions[i] += size
        calls += advance_all(detectors)
    for detector in detectors:
        detector.finish(run=False)
    calls += advance_all(detectors)
    assert calls < sum(len(a) for a in alone)  # the chunks really went through in batches
    for detector, reference in zip(detectors, alone):
        np.testing.assert_allclose(detector.probabilities, reference, rtol=0, atol=1e-6)


def test_model_run_is_batched_over_rows(model: VoiceActivityModel) -> None:
    rng = np.random.default_rng(6)
    chunks = (rng.standard_normal((3, CHUNK)) * 0.1).astype(np.float32)
    contexts = (rng.standard_normal((3, 64)) * 0.1).astype(np.float32)
    states = (rng.standard_normal((2, 3, 128)) * 0.1).astype(np.float32)
    probabilities, next_states = model.run(chunks, contexts, states)
    assert probabilities.shape == (3,) and next_states.shape == (2, 3, 128)
    for row in range(3):
        p, s = model.run(chunks[row:row + 1], contexts[row:row + 1], states[:, row:row + 1])
        np.testing.assert_allclose(p, probabilities[row:row + 1], rtol=0, atol=1e-6)
        np.testing.assert_allclose(s[:, 0], next_states[:, row], rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        model.run(chunks[:, :500], contexts, states)


def test_streaming_gate_equals_offline_gate(model: VoiceActivityModel) -> None:
    """Frame k is gated as soon as its horizon (time + look-ahead) has arrived, with the chunks the
    stream has then: the gate must equal the one computed from the whole file afterwards."""
    audio = np.concatenate([np.zeros(4000, np.float32), _speech_clips()[0], _white_noise(0.5, seed=7)])
    times = _frame_times(audio)
    horizons = times + LOOKAHEAD
    offline = mouth_gate(_run(model, audio), times, horizons)
    detector = VoiceActivity(model)
    streamed = np.full(len(times), -1.0, np.float32)
    rng = np.random.default_rng(8)
    position, next_frame = 0, 0
    while position < len(audio):
        size = int(rng.integers(1, 1500))
        detector.accept(audio[position:position + size])
        position += size
        due = np.nonzero(horizons[next_frame:] * SAMPLE_RATE <= detector.samples_received)[0]
        if len(due):
            frames = slice(next_frame, next_frame + int(due[-1]) + 1)
            streamed[frames] = mouth_gate(detector.probabilities, times[frames], horizons[frames])
            next_frame = frames.stop
    detector.finish()
    streamed[next_frame:] = mouth_gate(detector.probabilities, times[next_frame:], horizons[next_frame:])
    assert streamed.tobytes() == offline.tobytes()


def test_gate_uses_only_available_chunks() -> None:
    probabilities = np.array([0.0, 0.0, 1.0], np.float32)  # speech in chunk 2: [1024, 1536) samples
    t = np.array([800 / SAMPLE_RATE])  # window [800 - 960, 800 + 640] samples overlaps chunk 2
    assert mouth_gate(probabilities, t, t + 0.040)[0] == 0.0  # chunk 2 ends after the horizon
    assert mouth_gate(probabilities, t, np.array([1536 / SAMPLE_RATE]))[0] == 1.0  # ends exactly at it
    assert mouth_gate(np.zeros(0, np.float32), t, t + 1.0)[0] == 0.0
    ramp = mouth_gate(np.array([0.1, 0.15, 0.325, 0.5, 0.9], np.float32), (np.arange(5) + 0.5) * CHUNK / SAMPLE_RATE,
                      1.0, hangover=0.0, lookahead=0.0)
    np.testing.assert_allclose(ramp, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_missing_model_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="voice-activity model is missing"):
        VoiceActivityModel(tmp_path / "absent.onnx")


def test_vendored_model_matches_its_source_note() -> None:
    from emotalk_stream.training.model_files import file_sha256
    source = (MODEL_PATH.parent / "SOURCE.md").read_text()
    assert file_sha256(MODEL_PATH) in source
    assert (MODEL_PATH.parent / "LICENSE").read_text().startswith("MIT License")
    assert MODEL_PATH.stat().st_size < 3_000_000


def test_module_never_imports_torch(tmp_path: Path) -> None:
    script = (
        "import json, sys, numpy as np\n"
        "from emotalk_stream.engine.voice_activity import VoiceActivity, mouth_gate\n"
        "v = VoiceActivity(); v.accept(np.zeros(5000, np.float32)); v.finish()\n"
        "mouth_gate(v.probabilities, np.arange(10) / 30, np.arange(10) / 30 + 0.04)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchaudio'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
