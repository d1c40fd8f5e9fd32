"""The streaming engine: exact against offline inference, batched, controllable, bounded in memory."""
from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emotalk_stream.engine import artifact
from emotalk_stream.engine.backends import OnnxRuntimeBackend
from emotalk_stream.engine.engine import PARALLEL_MIN, Controls, Engine
from emotalk_stream.engine.interface import PREROLL
from emotalk_stream.engine.onnx_export import export_onnx
from emotalk_stream.engine.small_step import SmallStreamingStep, step_interface
from emotalk_stream.engine.torch_backend import prototype_labels
from emotalk_stream.engine.export import main as export_main
from emotalk_stream.training import config
from emotalk_stream.training.audio import read_audio
from emotalk_stream.training.checkpoint import load_model, save_checkpoint
from emotalk_stream.training.model_files import DEFAULT_ENGINE, DEFAULT_MODEL, SAMPLE_SPEECH, model_hash
from emotalk_stream.training.config import EncoderConfig
from emotalk_stream.training.errors import UserError
from emotalk_stream.training.offline import infer
from emotalk_stream.training.framing import frame_count
from emotalk_stream.training.model import EVIDENCE_S, EmoTalk

SAMPLE = SAMPLE_SPEECH


@pytest.fixture(scope="module")
def model() -> EmoTalk:
    return load_model("default")


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    audio = read_audio(SAMPLE, 16000)
    return [audio, audio[:20000], audio[5000:41234]]


@pytest.fixture(scope="module")
def onnx_engine_dir() -> Path:
    """The bundled engine artifact: the tests that compare it with the checkpoint keep it in sync."""
    assert artifact.read_manifest(DEFAULT_ENGINE).source_sha256 == model_hash(DEFAULT_MODEL)
    return DEFAULT_ENGINE


def _offline(model: EmoTalk, clip: np.ndarray, lookahead: int, **controls) -> np.ndarray:
    return infer(model, clip, lookahead=lookahead, **controls)[0]


@pytest.mark.parametrize("hop_ms,lookahead_ms", [(20, 0), (20, 40), (40, 80), (100, 120), (60, 20)])
def test_streaming_equals_offline_inference(model: EmoTalk, clips: list[np.ndarray], hop_ms: int, lookahead_ms: int) -> None:
    engine = Engine.from_checkpoint(model, "torch", hop_ms=hop_ms, lookahead_ms=lookahead_ms)
    streamed = engine.process(clips, Controls(level=0.3, person=5, emotion="auto"))
    for clip, out in zip(clips, streamed):
        reference = _offline(model, clip, lookahead_ms // 20, level=0.3, person=5)
        assert out.shape == reference.shape == (frame_count(len(clip)), 52)
        np.testing.assert_allclose(out, reference, atol=2e-5)


def test_chunk_sizes_do_not_matter(model: EmoTalk, clips: list[np.ndarray]) -> None:
    engine = Engine.from_checkpoint(model, "torch")
    stream = engine.create_stream()
    rng = np.random.default_rng(0)
    position, frames = 0, []
    while position < len(clips[0]):
        size = int(rng.choice([1, 77, 320, 999, 5000]))
        stream.accept_waveform(16000, clips[0][position:position + size])
        position += size
        while engine.is_ready(stream):
            engine.step([stream])
        frames += list(stream.frames())
    stream.input_finished()
    while engine.is_ready(stream):
        engine.step([stream])
    frames += list(stream.frames())
    assert [f.index for f in frames] == list(range(frame_count(len(clips[0]))))
    assert frames[30].time == pytest.approx(1.0)
    np.testing.assert_allclose(np.stack([f.weights for f in frames]), engine.process(clips[:1])[0], atol=1e-6)


def test_onnxruntime_matches_torch(model: EmoTalk, clips: list[np.ndarray], onnx_engine_dir: Path) -> None:
    onnx = Engine.from_artifact(onnx_engine_dir)
    assert onnx.backend.name == "onnxruntime" and (onnx.hop_ms, onnx.lookahead_ms) == (20, 0)
    reference = Engine.from_checkpoint(model, "torch").process(clips, Controls(emotion="sad:0.5"))
    for out, ref in zip(onnx.process(clips, Controls(emotion="sad:0.5")), reference):
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() <= 1e-3


def test_whole_state_step_for_tensorrt_matches_the_ring_step(model: EmoTalk, clips: list[np.ndarray],
                                                              tmp_path: Path) -> None:
    """TensorRT's export writes whole new key/value tensors instead of ring rows: that graph, run on
    ONNX Runtime, gives the frames of the ring step."""
    step = SmallStreamingStep(model, 1, 2, ring=False)
    export_onnx(step, tmp_path / "model.onnx", max_streams=4)
    interface = step_interface(step)
    assert not any(spec.ring_axis is not None for spec in interface.states)
    backend = OnnxRuntimeBackend(tmp_path / "model.onnx", interface)
    whole = Engine(model.cfg, backend, 1, 2, prototype_labels(model), PREROLL)
    reference = Engine.from_checkpoint(model, "torch", lookahead_ms=40).process(clips, Controls(emotion="sad:0.5"))
    for out, ref in zip(whole.process(clips, Controls(emotion="sad:0.5")), reference):
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() <= 1e-3


def test_freed_slots_are_reused_out_of_order(model: EmoTalk, clips: list[np.ndarray], onnx_engine_dir: Path) -> None:
    for engine in (Engine.from_checkpoint(model, "torch", lookahead_ms=40), Engine.from_artifact(onnx_engine_dir)):
        streams = [engine.create_stream() for _ in range(3)]
        streams[1].close()
        streams[1] = engine.create_stream(Controls(person=7, emotion="auto"))  # takes the freed slot back
        streams[0].close()
        assert sorted(s.slot for s in streams[1:]) == [1, 2]
        for stream, clip in zip(streams[1:], clips[1:]):
            stream.accept_waveform(16000, clip)
            stream.input_finished()
        while not all(s.done for s in streams[1:]):
            engine.step([streams[2], streams[1]])
        got = np.stack([f.weights for f in streams[1].frames()])
        np.testing.assert_allclose(got, _offline(model, clips[1], engine.lookahead_frames, person=7), atol=1e-5)


def test_steps_over_scattered_slots_give_each_stream_its_own_frames(clips: list[np.ndarray],
                                                                    onnx_engine_dir: Path) -> None:
    """Streams in slots 0, 2, 3 and 5 stepped in changing subsets: consecutive ones (read in place),
    ones spread wide (gathered) and ones close together (their span run, the rows between thrown
    away) all give the frames the stream gets alone."""
    engine = Engine.from_artifact(onnx_engine_dir)
    streams = [engine.create_stream(Controls(person=i)) for i in range(6)]
    for gone in (1, 4):
        streams[gone].close()
    live = [streams[i] for i in (0, 2, 3, 5)]
    audio = [clips[i % len(clips)][:24000] for i in range(len(live))]
    for stream, clip in zip(live, audio):
        stream.accept_waveform(16000, clip)
        stream.input_finished()
    subsets = [(0, 1, 2), (1, 2, 3), (0, 2, 3), (0, 1, 3), (0, 3), (1, 2)]  # spans 4, 4, 6, 6, 6, 2
    step = 0
    while not all(s.done for s in live):
        engine.step([live[i] for i in subsets[step % len(subsets)]])
        step += 1
    for i, (stream, clip) in enumerate(zip(live, audio)):
        alone = engine.process([clip], Controls(person=stream.slot))[0]
        np.testing.assert_allclose(np.stack([f.weights for f in stream.frames()]), alone, atol=1e-5)


def test_a_large_step_run_as_two_halves_gives_each_stream_its_own_frames(clips: list[np.ndarray],
                                                                         onnx_engine_dir: Path) -> None:
    """2 x PARALLEL_MIN streams and more: ONNX Runtime runs the step's two halves on two threads at
    once, each gathering its rows (every other slot is free); every stream still gets the frames it
    gets alone."""
    engine = Engine.from_artifact(onnx_engine_dir)
    count = 2 * PARALLEL_MIN + 2
    streams = [engine.create_stream(Controls(person=i % 24)) for i in range(2 * count)]
    for gone in streams[1::2]:
        gone.close()
    streams = streams[::2]
    audio = [clips[i % len(clips)][4000 * (i % 3):4000 * (i % 3) + 16000] for i in range(count)]
    for stream, clip in zip(streams, audio):
        stream.accept_waveform(16000, clip)
        stream.input_finished()
    assert engine.backend.concurrent_runs and len(engine._split([np.array([s.slot for s in streams])])) == 2
    while not all(s.done for s in streams):
        engine.step(streams)
    for stream, clip in zip(streams[::5], audio[::5]):
        alone = engine.process([clip], Controls(person=stream.controls.person))[0]
        np.testing.assert_allclose(np.stack([f.weights for f in stream.frames()]), alone, atol=1e-5)


def test_controls_change_between_steps(model: EmoTalk, clips: list[np.ndarray]) -> None:
    engine = Engine.from_checkpoint(model, "torch")
    clip = np.tile(clips[0], 2)  # 10 s, so the decoder's 2 s memory of the old controls runs out
    stream = engine.create_stream(Controls(level="low", emotion="auto"))
    half = len(clip) // 4
    stream.accept_waveform(16000, clip[:half])
    while engine.is_ready(stream):
        engine.step([stream])
    before = np.stack([f.weights for f in stream.frames()])
    stream.controls = Controls(level="high", emotion="happy:1", gains={"mouth": 0.0})
    stream.accept_waveform(16000, clip[half:])
    stream.input_finished()
    while engine.is_ready(stream):
        engine.step([stream])
    after = np.stack([f.weights for f in stream.frames()])
    low = _offline(model, clip, engine.lookahead_frames, level=0.0)
    np.testing.assert_allclose(before, low[: len(before)], atol=1e-5)
    from emotalk_stream.training.blendshapes import REGIONS
    assert np.all(after[:, list(REGIONS["mouth"])] == 0.0)
    happy = _offline(model, clip, engine.lookahead_frames, level=1.0, emotion=2, strength=1.0)
    upper = [i for i in range(52) if i not in REGIONS["mouth"]]
    # Past the decoder's 2 s memory of the old controls, frames are those of the new ones.
    np.testing.assert_allclose(after[-120:, upper], happy[-120:, upper], atol=1e-5)
    assert np.abs(after[:30, upper] - happy[len(before):len(before) + 30, upper]).max() > 1e-3
    with pytest.raises(UserError, match="unknown emotion"):
        stream.controls = Controls(emotion="bored")
    with pytest.raises(UserError, match="region"):
        stream.controls = Controls(gains={"ears": 2.0})
    assert stream.controls.level == "high"  # a refused change keeps the old controls


def test_emotion_estimate_matches_offline(model: EmoTalk, clips: list[np.ndarray]) -> None:
    engine = Engine.from_checkpoint(model, "torch")
    stream = engine.create_stream()
    assert stream.emotion_probabilities() is None
    stream.accept_waveform(16000, clips[0])
    stream.input_finished()
    while engine.is_ready(stream):
        engine.step([stream])
    np.testing.assert_allclose(stream.emotion_probabilities(), infer(model, clips[0])[1], atol=1e-5)


def test_the_streams_emotion_follows_a_change_in_the_voice(clips: list[np.ndarray]) -> None:
    """The voice's emotion is its recent one: after 12 s of one reading, 12 s of another read as that
    other reading alone does, where the mean since the stream began would read half of each. Against
    a speaker's usual that now includes the first reading, the second reads more surely so."""
    engine = Engine.load("default")
    first = np.tile(clips[0], 3)[: 12 * 16000]
    slowed = np.interp(np.arange(0, len(clips[0]), 0.75), np.arange(len(clips[0])), clips[0])
    second = np.tile(slowed.astype(np.float32), 3)[: 12 * 16000]  # lower and slower: another reading
    (_, p_first), (_, p_second), (_, p_both) = engine.process_with_emotion(
        [first, second, np.concatenate([first, second])])
    assert p_first.argmax() != p_second.argmax() and np.abs(p_first - p_second).max() > 0.5
    assert p_both.argmax() == p_second.argmax() and p_both.max() >= p_second.max()


def faces_under_a_decided_head(model: EmoTalk, clip: np.ndarray, **engine_args: object
                               ) -> dict[float, dict[str, np.ndarray]]:
    """The faces of `clip` under auto, calm and happy with the emotion head forced to every label
    equally likely (0.0) and to happy for certain (100.0)."""
    faces = {}
    for happy_logit in (0.0, 100.0):
        decided = copy.deepcopy(model)
        head = decided.audio_encoder_emo.classifier.out_proj
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            head.bias[decided.cfg.emotion_labels.index("happy")] = happy_logit
        decided.audio_encoder_emo.classifier.familiar_range.zero_()  # sure of every voice
        engine = Engine.from_checkpoint(decided, "torch", **engine_args)
        faces[happy_logit] = {emotion: engine.process([clip], Controls(level=0.3, emotion=emotion))[0]
                              for emotion in ("auto", "calm", "happy")}
    return faces


@pytest.mark.parametrize("family", ["small", "large"])
def test_auto_shows_calm_when_unsure_and_the_emotion_when_sure(model: EmoTalk, clips: list[np.ndarray],
                                                                family: str) -> None:
    """`auto` shows the detected emotion in proportion to its confidence, the rest the calm face;
    in full once EVIDENCE_S of the stream is heard: in the small step and in the large family's
    sliding windows (given prototypes, as training fills them)."""
    clip = np.tile(clips[0], 2)  # 10 s
    if family == "small":
        faces = faces_under_a_decided_head(model, clip)
    else:
        tiny = tiny_large_model(emotion_labels=model.cfg.emotion_labels)
        torch.nn.init.normal_(tiny.emotion_prototypes, std=1.0)
        faces = faces_under_a_decided_head(tiny, clip, hop_ms=40, lookahead_ms=100)
    np.testing.assert_allclose(faces[0.0]["auto"], faces[0.0]["calm"], atol=1e-5)
    sure = faces[100.0]
    assert np.abs(sure["calm"] - sure["happy"]).max() > 0.05  # the two faces differ
    # Past EVIDENCE_S and the decoder's 2 s memory of the frames before it, the face is happy's ...
    np.testing.assert_allclose(sure["auto"][-120:], sure["happy"][-120:], atol=1e-5)
    # ... and at the start, a few frames are not yet evidence enough for the whole of it.
    start = slice(0, int(EVIDENCE_S * 30))
    assert np.abs(sure["auto"][start] - sure["happy"][start]).max() > 1e-3


MEMORY_RUN = """
import json, sys
from emotalk_stream.engine import Engine
from emotalk_stream.tools.bench import current_rss_mb, speech
engine = Engine.from_artifact(sys.argv[1])
stream = engine.create_stream()
minute = speech(60.0, 16000)
rss = []
for _ in range(4):
    for start in range(0, len(minute), 320):
        stream.accept_waveform(16000, minute[start:start + 320])
        engine.step([stream])
        list(stream.frames())  # a client takes its frames
    rss.append(current_rss_mb())
print(json.dumps({"rss": rss, "frames": stream.frames_decoded, "buffer": stream._buffer.nbytes,
                  "limit": 4 * engine.hop_samples * 4}))
"""


def test_memory_stays_flat_on_a_long_stream(onnx_engine_dir: Path) -> None:
    """Four minutes of one stream in a process of its own (what other tests leave running in this
    one, threads and caches, would grow its memory too)."""
    done = subprocess.run([sys.executable, "-c", MEMORY_RUN, str(onnx_engine_dir)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    rss = got["rss"]
    assert got["frames"] >= 4 * 60 * 30 - 5
    # From the end of the first minute on: allocators (ONNX Runtime's arenas, the voice-activity
    # thread's) may still settle in it, once (a clean CI run grew 3.6 MB there, then 0.05 MB).
    assert rss[3] - rss[1] < 3.0, rss
    assert got["buffer"] <= got["limit"]  # the input buffer never grew


def test_bad_input_gets_one_clear_error(model: EmoTalk, onnx_engine_dir: Path, tmp_path: Path) -> None:
    engine = Engine.from_checkpoint(model, "torch")
    stream = engine.create_stream()
    with pytest.raises(UserError, match="44100 Hz.*16000"):
        stream.accept_waveform(44100, np.zeros(441, np.float32))
    with pytest.raises(UserError, match="one channel"):
        stream.accept_waveform(16000, np.zeros((2, 100), np.float32))
    stream.accept_waveform(16000, np.array([np.nan, np.inf, 0.1], np.float32))
    assert stream.nonfinite_samples == 2
    stream.input_finished()
    with pytest.raises(UserError, match="after input_finished"):
        stream.accept_waveform(16000, np.zeros(10, np.float32))
    with pytest.raises(UserError, match="unknown backend"):
        Engine.from_checkpoint(model, "openvino")
    with pytest.raises(UserError, match="emotalk-export --backend tensorrt"):
        Engine.from_checkpoint(model, "tensorrt")
    with pytest.raises(UserError, match="torch backend runs a checkpoint"):
        Engine.from_artifact(onnx_engine_dir, "torch")
    with pytest.raises(UserError, match="no TensorRT plan"):
        Engine.from_artifact(onnx_engine_dir, "tensorrt")
    with pytest.raises(UserError, match="look-ahead 160 ms"):
        Engine.from_checkpoint(model, "torch", lookahead_ms=160)
    with pytest.raises(UserError, match="multiple of 20"):
        Engine.from_checkpoint(model, "torch", hop_ms=30)


def test_load_picks_the_bundled_engine_or_the_checkpoint(onnx_engine_dir: Path) -> None:
    assert Engine.load("default").backend.name == "onnxruntime"  # no PyTorch needed
    assert Engine.load(onnx_engine_dir).backend.name == "onnxruntime"
    assert Engine.load("default", "torch").backend.name == "torch"
    other = Engine.load("default", lookahead_ms=40)  # not what the bundled engine was exported at
    assert (other.backend.name, other.lookahead_ms) == ("torch", 40)
    with pytest.raises(UserError, match="its own hop and look-ahead"):
        Engine.load(onnx_engine_dir, lookahead_ms=40)
    with pytest.raises(UserError, match="not an engine artifact"):
        Engine.from_artifact(DEFAULT_MODEL)


def _copy_artifact(source: Path, target: Path) -> Path:
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def test_artifacts_that_do_not_match_are_refused(onnx_engine_dir: Path, tmp_path: Path) -> None:
    manifest = json.loads((onnx_engine_dir / artifact.MANIFEST_FILE).read_text())
    assert manifest["opset"] >= 17 and manifest["backend"] == "onnx" and manifest["precision"] == "fp32"
    assert {s["name"] for s in manifest["interface"]["states"]} >= {"dec_k0", "content_k0", "emotion_tail"}

    tampered = _copy_artifact(onnx_engine_dir, tmp_path / "tampered")
    (tampered / artifact.ONNX_FILE).write_bytes((tampered / artifact.ONNX_FILE).read_bytes()[:-10])
    with pytest.raises(UserError, match="does not match its manifest"):
        Engine.from_artifact(tampered)

    old = _copy_artifact(onnx_engine_dir, tmp_path / "old")
    (old / artifact.MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 0}))
    with pytest.raises(UserError, match="format version 0"):
        Engine.from_artifact(old)

    other = _copy_artifact(onnx_engine_dir, tmp_path / "other")
    states = [dict(s, shape=[s["shape"][0] + 1, *s["shape"][1:]]) if s["name"] == "content_k0" else s
              for s in manifest["interface"]["states"]]
    (other / artifact.MANIFEST_FILE).write_text(json.dumps({**manifest, "interface": {**manifest["interface"], "states": states}}))
    with pytest.raises(UserError, match="another version"):
        Engine.from_artifact(other)

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / artifact.MANIFEST_FILE).write_text("[1, 2]")
    with pytest.raises(UserError, match="not an emotalk-stream engine manifest"):
        Engine.from_artifact(tmp_path / "junk")


def _narrow_small_checkpoint(folder: Path) -> Path:
    """A `small`-family checkpoint one layer deep and narrow, with a "happy" prototype: the same
    export path as the bundled model's in a fraction of the tracing time (the bundled artifact, an
    export of the real model, is checked against the checkpoint above)."""
    enc = EncoderConfig(kind="streaming", hidden=32, layers=1, heads=2, ffn=48, n_mels=16, left_context=20)
    cfg = dataclasses.replace(config.small(), content=enc, emotion=dataclasses.replace(enc, left_context=30),
                              content_dim=16, emotion_dim=8, level_dim=4, person_dim=4, decoder_ffn=24,
                              decoder_past=12)
    torch.manual_seed(0)
    model = EmoTalk(cfg).eval()
    model.emotion_prototypes[cfg.emotion_labels.index("happy")] = 0.5
    return save_checkpoint(model, folder)


def test_export_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    narrow = _narrow_small_checkpoint(tmp_path / "narrow")
    assert export_main(["--model", str(narrow), "--out", str(tmp_path / "e"), "--hop-ms", "40", "--lookahead-ms", "80",
                        "--max-streams", "4"]) == 0
    manifest = artifact.read_manifest(tmp_path / "e")
    assert (manifest.hop_ms, manifest.lookahead_ms, manifest.max_streams) == (40, 80, 4)
    assert set(manifest.files) == {artifact.ONNX_FILE}
    assert "happy" in manifest.prototype_labels
    clip, controls = read_audio(SAMPLE, 16000)[:16000], Controls(emotion="happy:0.5")
    exported = Engine.from_artifact(tmp_path / "e").process([clip], controls)[0]
    reference = Engine.from_checkpoint(narrow, "torch", hop_ms=40, lookahead_ms=80).process([clip], controls)[0]
    assert exported.shape == reference.shape == (30, 52) and np.abs(exported - reference).max() <= 1e-3
    capsys.readouterr()
    assert export_main(["--out", str(tmp_path / "f"), "--hop-ms", "30"]) == 2
    assert export_main(["--out", str(tmp_path / "g"), "--fp16"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "multiple of 20" in errors[0] and "TensorRT" in errors[1]
    assert all(line.startswith("emotalk-export: error:") for line in errors)


def tiny_large_model(**changes: object) -> EmoTalk:
    """A `large`-family model (wav2vec2 encoders, sliding windows) small enough for a test."""
    torch.manual_seed(0)
    w2v = EncoderConfig(kind="wav2vec2", hidden=32, layers=1, heads=1, ffn=48, conv_dim=16,
                        pos_conv_kernel=8, pos_conv_groups=4)
    cfg = dataclasses.replace(config.large(), content=w2v, emotion=dataclasses.replace(w2v), content_dim=16,
                              emotion_dim=8, level_dim=4, person_dim=4, decoder_ffn=24, **changes)
    tiny = EmoTalk(cfg).eval()
    torch.nn.init.normal_(tiny.bs_map_r.weight, std=0.5)
    return tiny


def test_large_family_streams_with_sliding_windows(clips: list[np.ndarray]) -> None:
    tiny = tiny_large_model()
    engine = Engine.from_checkpoint(tiny, "torch", hop_ms=40, lookahead_ms=100)
    clip = clips[1]
    out = engine.process([clip])[0]
    assert out.shape == (frame_count(len(clip)), 52) and out.std() > 0.01
    # Frames never depend on audio beyond their own time plus the look-ahead.
    stream = engine.create_stream()
    stream.accept_waveform(16000, clip[:12000])
    while engine.is_ready(stream):
        engine.step([stream])
    early = np.stack([f.weights for f in stream.frames()])
    stepped = 12000 // 640 * 640  # whole hops of 40 ms
    assert len(early) == sum(1 for k in range(100) if k * 16000 / 30 + 1600 <= stepped)
    np.testing.assert_allclose(early, out[: len(early)], atol=1e-5)
    with pytest.raises(UserError, match="torch backend"):
        Engine.from_checkpoint(tiny, "onnxruntime")
