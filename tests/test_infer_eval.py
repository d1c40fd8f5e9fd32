"""emotalk-infer and emotalk-eval end to end on an untrained small model and a tiny data folder."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emotalk_stream.training import config
from emotalk_stream.engine.arousal import decoder_levels
from emotalk_stream.training.audio import read_audio, write_wav
from emotalk_stream.training.blendshapes import INDEX, LIVELINK_UDP_ORDER, NAMES
from emotalk_stream.training.checkpoint import save_checkpoint
from emotalk_stream.training.config import OFFICIAL_EMOTIONS, EncoderConfig
from emotalk_stream.training.errors import UserError
from emotalk_stream.training.data import by_split, load_folder
from emotalk_stream.training.evaluate import BASELINES, METRICS, VERTEX_METRICS, evaluate
from emotalk_stream.training.evaluate import main as eval_main
from emotalk_stream.training.infer import main as infer_main
from emotalk_stream.training.control_values import parse_emotion, parse_level, parse_person
from emotalk_stream.training.livelink_csv import read_csv
from emotalk_stream.training.model import EmoTalk

RATE = 16000


def _model(prototypes: bool) -> EmoTalk:
    torch.manual_seed(0)
    model = EmoTalk(config.small())
    # The head starts at zero (as the official one): give it weights so frames differ.
    torch.nn.init.normal_(model.bs_map_r.weight, std=0.3)
    torch.nn.init.uniform_(model.bs_map_r.bias, 0.2, 0.8)
    if prototypes:
        model.emotion_prototypes.normal_(std=3.0)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    paths = {"trained": save_checkpoint(_model(True), root / "trained"),
             "no_prototypes": save_checkpoint(_model(False), root / "no_prototypes")}
    wrong = save_checkpoint(_model(True), root / "wrong_shape")
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["content_dim"] = 96  # the weights say 128
    (wrong / "config.json").write_text(json.dumps(cfg))
    paths["wrong_shape"] = wrong
    return paths


def speech_like(seconds: float, seed: int, rate: int = RATE) -> np.ndarray:
    """Noise bursts with a syllable-rate envelope: enough for loudness to follow."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t), 0, None)
    return (0.3 * envelope * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder in the corpus layout: metadata.csv + clips/NAME.{wav,npy}."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "clips").mkdir()
    rows = [("a_neutral", "a", "neutral", 0, 0, "train"), ("a_happy", "a", "happy", 1, 0, "train"),
            ("b_sad", "b", "sad", 1, 1, "train"), ("b_happy", "b", "happy", 0, 1, "train"),
            ("c_angry", "c", "angry", 1, 2, "val"),
            ("d_happy", "d", "happy", 1, 3, "test"), ("d_fearful", "d", "fearful", 0, 3, "test")]
    for i, (name, *_rest) in enumerate(rows):
        audio = speech_like(0.6 + 0.1 * i, i)
        write_wav(root / "clips" / f"{name}.wav", audio)
        frames = math.ceil(len(audio) / RATE * 30)
        labels = np.random.default_rng(i).random((frames, len(NAMES))).astype(np.float32) * 0.3
        np.save(root / "clips" / f"{name}.npy", labels)
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["clip", "content", "emotion", "level", "person", "split"])
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    write_wav(path, speech_like(1.37, 42))
    return path


def one_error_line(capsys: pytest.CaptureFixture[str], prog: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- control parsers, shared with the streamer --

def test_parse_emotion() -> None:
    labels = config.RAVDESS_EMOTIONS
    assert parse_emotion("auto", labels) == (None, 0.0)
    assert parse_emotion("happy", labels) == (labels.index("happy"), 1.0)
    assert parse_emotion("Angry:0.7", labels) == (labels.index("angry"), 0.7)
    assert parse_emotion("fear", labels)[0] == labels.index("fearful")  # the official spelling
    with pytest.raises(UserError, match="unknown emotion 'joy': use auto or one of neutral, calm"):
        parse_emotion("joy", labels)
    for bad in ("happy:1.5", "happy:-0.1", "happy:x", "happy:nan"):
        with pytest.raises(UserError, match="strength"):
            parse_emotion(bad, labels)


def test_parse_level_and_person() -> None:
    assert (parse_level("low"), parse_level("HIGH"), parse_level("0.25")) == (0.0, 1.0, 0.25)
    for bad in ("1.5", "-1", "medium", "nan"):
        with pytest.raises(UserError, match="emotion level"):
            parse_level(bad)
    assert parse_person("23") == 23
    for bad in ("24", "-1", "1.5", "bob"):
        with pytest.raises(UserError, match="from 0 to 23"):
            parse_person(bad)


# -- emotalk-infer --

def test_infer_writes_npy_with_the_official_frame_count(models: dict[str, Path], speech: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "face.npy"
    assert infer_main([str(speech), "--model", str(models["trained"]), "--out", str(out)]) == 0
    weights = np.load(out)
    assert weights.shape == (math.ceil(int(1.37 * RATE) / RATE * 30), 52) and weights.dtype == np.float32
    assert weights.min() >= 0.0 and weights.max() <= 1.0 and weights.std(axis=0).max() > 0
    summary = capsys.readouterr().err.strip().splitlines()
    assert len(summary) == 1 and "42 frames (1.37 s)" in summary[0] and "voice emotion" in summary[0]


@pytest.mark.parametrize("blink", [[], ["--no-blink"]], ids=["blinking", "no-blink"])
def test_an_offline_take_equals_the_streamed_take_of_the_same_file(blink: list[str], tmp_path: Path) -> None:
    """emotalk-infer and emotalk-stream --no-pace --record of one 44.1 kHz file that ends mid-frame:
    the same frame count (ceil(N x 30)) and the same frames, blinks included or left out by both."""
    from emotalk_stream.streamer.cli import main as stream_main
    import soundfile as sf
    wav = tmp_path / "take.wav"
    sf.write(str(wav), speech_like(2.345, 7, 44100), 44100)  # 44.1 kHz: the stream resamples it
    offline, streamed = tmp_path / "offline.npy", tmp_path / "streamed.npy"
    assert infer_main([str(wav), "--out", str(offline), *blink]) == 0
    assert stream_main(["--wav", str(wav), "--no-pace", "--quiet", "--record", str(streamed), *blink]) == 0
    a, b = np.load(offline), np.load(streamed)
    assert a.shape == b.shape == (71, 52)  # 2.345 s x 30 = 70.35 frames: the last one partly filled
    np.testing.assert_allclose(a, b, atol=1e-6)
    eyes = a[:, [INDEX["eyeBlinkLeft"], INDEX["eyeBlinkRight"]]]
    assert (eyes.max() > 0.9) == (not blink)  # a blink shuts the eyes within 2.3 s (the first comes by 2.1 s)


def test_infer_csv_reads_back_equal_by_name(models: dict[str, Path], speech: Path, tmp_path: Path) -> None:
    npy, csv_path = tmp_path / "face.npy", tmp_path / "face.csv"
    for out in (npy, csv_path):
        assert infer_main([str(speech), "--model", str(models["trained"]), "--out", str(out)]) == 0
    weights = np.load(npy)
    np.testing.assert_allclose(read_csv(csv_path), weights, atol=1e-7)
    with csv_path.open(newline="") as handle:
        header, first = next(csv.reader(handle)), next(csv.reader(handle))
    # The CSV swaps Jaw Left/Right against the UDP order; the value still belongs to its name.
    column = header.index("JawLeft")
    assert column - 2 == LIVELINK_UDP_ORDER.index("JawRight")
    assert float(first[column]) == pytest.approx(weights[0, INDEX["jawLeft"]], abs=1e-9)
    assert float(first[header.index("MouthRight")]) == pytest.approx(weights[0, INDEX["mouthRight"]], abs=1e-9)


def test_controls_change_the_face(models: dict[str, Path], speech: Path, tmp_path: Path) -> None:
    def run(*extra: str) -> np.ndarray:
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.npy"
        assert infer_main([str(speech), "--model", str(models["trained"]), "--out", str(out), *extra]) == 0
        return np.load(out)

    auto = run("--emotion", "auto")
    own = run("--emotion", "happy:0")  # strength 0 leaves the voice's own emotion, whatever the label
    np.testing.assert_array_equal(run("--emotion", "sad:0"), own)
    np.testing.assert_array_equal(run(), run("--emotion", "calm"))  # the default: a calm face
    assert not np.allclose(run("--emotion", "happy"), auto)
    assert not np.allclose(run("--level", "low"), auto)
    assert not np.allclose(run("--person", "5"), auto)


@pytest.mark.parametrize("case, words", [
    ("missing_audio", "does not exist"),
    ("corrupt_audio", "cannot read"),
    ("unknown_emotion", "unknown emotion 'joy'"),
    ("bad_strength", "strength"),
    ("level_out_of_range", "emotion level '1.5'"),
    ("person_out_of_range", "person '24'"),
    ("wrong_shape", "does not fit model config"),
    ("no_prototypes", "this model has no emotion prototypes"),
    ("bad_suffix", "must end in .npy or .csv"),
    ("missing_model", "not found"),
])
def test_infer_bad_inputs_exit_2_with_one_line(models: dict[str, Path], speech: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str], case: str, words: str) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(5000))
    audio, model, out, extra = str(speech), str(models["trained"]), str(tmp_path / "o.npy"), []
    if case == "missing_audio":
        audio = str(tmp_path / "nope.wav")
    elif case == "corrupt_audio":
        audio = str(corrupt)
    elif case == "unknown_emotion":
        extra = ["--emotion", "joy"]
    elif case == "bad_strength":
        extra = ["--emotion", "happy:2"]
    elif case == "level_out_of_range":
        extra = ["--level", "1.5"]
    elif case == "person_out_of_range":
        extra = ["--person", "24"]
    elif case in ("wrong_shape", "no_prototypes"):
        model = str(models[case])
        extra = ["--emotion", "happy"]
    elif case == "bad_suffix":
        out = str(tmp_path / "o.txt")
    elif case == "missing_model":
        model = str(tmp_path / "no_model")
    assert infer_main([audio, "--model", model, "--out", out, *extra]) == 2
    assert words in one_error_line(capsys, "emotalk-infer")
    assert not (tmp_path / "o.npy").exists()


def test_console_script_exits_2_without_traceback(models: dict[str, Path], tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(1).bytes(3000))
    script = Path(sys.executable).parent / "emotalk-infer"
    done = subprocess.run([str(script), str(corrupt), "--model", str(models["trained"]),
                           "--out", str(tmp_path / "o.npy")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emotalk-infer: error: cannot read") and str(corrupt) in lines[0]


# -- emotalk-eval --

def rig(path: Path, vertices: int = 12) -> Path:
    rng = np.random.default_rng(7)
    neutral = rng.normal(size=(vertices, 3)) * 0.05
    np.savez(path, neutral=neutral, blendshapes=neutral[None] + rng.normal(size=(52, vertices, 3)) * 0.005,
             lip_vertices=np.arange(0, 5), upper_vertices=np.arange(6, 12))
    return path


def test_eval_json_is_one_object_with_every_key(models: dict[str, Path], corpus: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    templates = rig(tmp_path / "rig.npz")
    code = eval_main(["--model", str(models["trained"]), "--data", str(corpus), "--split", "test", "--json",
                      "--templates", str(templates)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    keys = METRICS + VERTEX_METRICS
    assert set(keys) | {"clips", "frames", "split", "model", *BASELINES} <= set(result)
    assert result["clips"] == 2 and result["split"] == "test" and result["model"] == str(models["trained"])
    assert result["emotion_clips"] == 2 and result["frames"] == sum(
        len(np.load(corpus / "clips" / f"{n}.npy")) for n in ("d_happy", "d_fearful"))
    for name in BASELINES:
        assert set(keys) <= set(result[name])
        assert result[name]["jaw_open_corr"] is not None
    assert result["baseline_mean_pose"]["jaw_open_corr"] == 0.0  # a constant face follows nothing
    assert result["baseline_mean_pose"]["jitter"] == 0.0
    assert result["baseline_energy"]["loudness"] in ("db", "linear")
    # Majority train emotion is happy: right on d_happy, wrong on d_fearful.
    assert result["baseline_mean_pose"]["emotion_accuracy"] == 0.5
    assert all(result[k] >= 0 for k in keys if k != "jaw_open_corr")


def test_eval_maps_emotions_onto_the_official_label_names(corpus: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # The official layout at toy sizes: wav2vec2 encoders and the 7 official labels, in which
    # "fearful" is spelled "fear".
    w2v = EncoderConfig(kind="wav2vec2", hidden=32, layers=1, heads=1, ffn=48, conv_dim=16,
                        pos_conv_kernel=8, pos_conv_groups=4)
    cfg = dataclasses.replace(config.large(), content=w2v, emotion=dataclasses.replace(w2v), content_dim=16,
                              emotion_dim=8, level_dim=4, person_dim=4, decoder_ffn=24)
    assert cfg.emotion_labels == OFFICIAL_EMOTIONS
    folder = save_checkpoint(EmoTalk(cfg), tmp_path / "official")
    assert eval_main(["--model", str(folder), "--data", str(corpus), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["emotion_clips"] == 2 and result["baseline_energy"]["emotion_accuracy"] == 0.5


def test_evaluate_api_restores_the_training_mode(corpus: Path) -> None:
    clips = load_folder(corpus)
    model = _model(True).train()
    result = evaluate(model, by_split(clips, "val"), by_split(clips, "train"), lookahead=0)
    assert model.training and result["clips"] == 1 and set(BASELINES) <= set(result)
    with pytest.raises(UserError, match="train split"):
        evaluate(model, by_split(clips, "val"), [])


def test_voice_level_by_emotion_hears_each_clip_after_its_neutral_take(corpus: Path) -> None:
    clips = by_split(load_folder(corpus), "train")  # a_happy has its neutral take; b's clips have none
    result = evaluate(_model(True), clips, clips)
    usual, heard = (read_audio(corpus / "clips" / f"{n}.wav", RATE) for n in ("a_neutral", "a_happy"))
    both = np.concatenate([usual, heard])
    level = decoder_levels(both, len(both) * 30 // RATE, 30, RATE)[len(usual) * 30 // RATE:].mean()
    assert result["voice_level_by_emotion"] == {"happy": round(float(level), 4)}


def test_eval_table_and_limit(models: dict[str, Path], corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert eval_main(["--model", str(models["trained"]), "--data", str(corpus), "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 clips" in out and "lip_mae" in out and "mean pose" in out and "lve_mm" not in out


@pytest.mark.parametrize("extra, words", [
    (["--split", "holdout"], "no clips in split 'holdout'"),
    (["--limit", "0"], "--limit 0"),
    (["--templates", "missing.npz"], "cannot read templates"),
])
def test_eval_bad_inputs_exit_2_with_one_line(models: dict[str, Path], corpus: Path, extra: list[str], words: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert eval_main(["--model", str(models["trained"]), "--data", str(corpus), *extra]) == 2
    assert words in one_error_line(capsys, "emotalk-eval")


def test_eval_missing_folder(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert eval_main(["--model", str(models["trained"]), "--data", str(tmp_path / "none"), "--json"]) == 2
    assert "does not exist" in one_error_line(capsys, "emotalk-eval")
