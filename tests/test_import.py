"""emotalk-import and our checkpoint format, on a shrunken official (`large`-family) layout.

The "official" files are written here with torch.save from a reference EmoTalk with random weights
(test_official_layout.py checks that its key names are the official ones), in both weight-norm
spellings; the converted checkpoint must reproduce the reference's outputs exactly.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from emotalk_stream.training import model_files
from emotalk_stream.training.checkpoint import load_model, save_checkpoint
from emotalk_stream.training.model_files import model_hash
from emotalk_stream.training.config import OFFICIAL_EMOTIONS, EncoderConfig, ModelConfig, large
from emotalk_stream.training.errors import UserError
from emotalk_stream.training.importer import OURS_ONLY, main
from emotalk_stream.training.model import FAMILIARITY_KEYS, EmoTalk
from emotalk_stream.training.wav2vec2 import Wav2Vec2Model

G_NEW = "parametrizations.weight.original0"
V_NEW = "parametrizations.weight.original1"

TINY_W2V = EncoderConfig(kind="wav2vec2", hidden=32, layers=2, heads=1, ffn=48, conv_dim=16,
                         pos_conv_kernel=8, pos_conv_groups=4, lm_head_vocab=5)
HF_CONFIG = {
    "model_type": "wav2vec2", "architectures": ["Wav2Vec2ForCTC"], "hidden_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 1, "intermediate_size": 48, "conv_dim": [16] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 4, "conv_bias": True,
    "feat_extract_norm": "layer", "do_stable_layer_norm": True, "hidden_act": "gelu",
    "feat_extract_activation": "gelu", "vocab_size": 5,
}


def tiny_large() -> ModelConfig:
    """The official structure at toy sizes; d_model = 16 + 8 + 4 + 4 = 32 (4 decoder heads)."""
    return dataclasses.replace(large(), content=TINY_W2V, emotion=dataclasses.replace(TINY_W2V),
                               content_dim=16, emotion_dim=8, level_dim=4, person_dim=4, decoder_ffn=24)


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (bs_map_r starts at zero, which would hide every error)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return module.eval()


def old_spelling(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace(G_NEW, "weight_g").replace(V_NEW, "weight_v"): v for k, v in state.items()}


def official_state(model: EmoTalk) -> dict[str, torch.Tensor]:
    state = dict(model.state_dict())
    for key in OURS_ONLY:  # ours; official checkpoints do not have them
        del state[key]
    return state


def run_outputs(model: EmoTalk) -> tuple[torch.Tensor, torch.Tensor]:
    noise = torch.randn(1, 16000, generator=torch.Generator().manual_seed(3))
    audio = torch.sin(torch.linspace(0, 900, 16000))[None] * 0.3 + noise * 0.05
    with torch.no_grad():
        return model(audio, torch.tensor([1]), torch.tensor([0]))


@pytest.fixture
def reference() -> EmoTalk:
    return randomize(EmoTalk(tiny_large()), seed=0)


def convert(args: list[str]) -> int:
    return main([str(a) for a in args])


@pytest.mark.parametrize("spelling", ["weight_g/weight_v", "parametrizations"])
def test_official_import_reproduces_reference(tmp_path: Path, reference: EmoTalk, spelling: str) -> None:
    state = official_state(reference)
    if spelling == "weight_g/weight_v":
        # Also the wrappers seen in the wild: {"state_dict": ...} and a DataParallel prefix.
        payload: dict = {"state_dict": {f"module.{k}": v for k, v in old_spelling(state).items()}, "epoch": 80}
    else:
        payload = state
    torch.save(payload, tmp_path / "EmoTalk.pth")
    assert convert(["--official", tmp_path / "EmoTalk.pth", "--out", tmp_path / "ours"]) == 0

    loaded = load_model(tmp_path / "ours")
    assert dataclasses.replace(loaded.cfg, extra={}) == reference.cfg
    assert loaded.cfg.emotion_labels == OFFICIAL_EMOTIONS
    assert loaded.cfg.extra["source_official"] == "EmoTalk.pth"
    assert not loaded.emotion_prototypes.any()
    blendshapes, logits = run_outputs(loaded)
    ref_blendshapes, ref_logits = run_outputs(reference)
    assert blendshapes.shape == (1, 30, 52)
    torch.testing.assert_close(blendshapes, ref_blendshapes, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-6)


def test_unused_missing_and_unexpected_keys_are_named(tmp_path: Path, reference: EmoTalk, capsys) -> None:
    state = official_state(reference)
    del state["audio_encoder_cont.masked_spec_embed"]
    state["audio_encoder_cont.bogus.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "EmoTalk.pth")
    assert convert(["--official", tmp_path / "EmoTalk.pth", "--out", tmp_path / "ours"]) == 0
    err = capsys.readouterr().err
    assert "audio_encoder_cont.masked_spec_embed" in err and "unused by the model" in err
    assert "audio_encoder_cont.bogus.weight" in err and "unexpected" in err
    torch.testing.assert_close(run_outputs(load_model(tmp_path / "ours"))[0], run_outputs(reference)[0],
                               rtol=0, atol=1e-6)


def test_missing_core_key_fails_and_names_it(tmp_path: Path, reference: EmoTalk, capsys) -> None:
    state = official_state(reference)
    del state["transformer_decoder.layers.0.norm2.bias"]
    torch.save(state, tmp_path / "EmoTalk.pth")
    assert convert(["--official", tmp_path / "EmoTalk.pth", "--out", tmp_path / "ours"]) == 2
    err = capsys.readouterr().err
    assert "transformer_decoder.layers.0.norm2.bias" in err
    assert "emotalk-import: error:" in err
    assert not (tmp_path / "ours" / "model.safetensors").exists()


class Exploit:
    """Unpickling this would create the marker file (open(marker, "w"))."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused(tmp_path: Path, reference: EmoTalk, capsys) -> None:
    marker = tmp_path / "pwned"
    torch.save({"state_dict": official_state(reference), "payload": Exploit(marker)}, tmp_path / "EmoTalk.pth")
    assert convert(["--official", tmp_path / "EmoTalk.pth", "--out", tmp_path / "ours"]) == 2
    err = capsys.readouterr().err
    assert "refusing to unpickle" in err and "not a plain state_dict" in err
    assert not marker.exists()
    assert not (tmp_path / "ours").exists()


@pytest.mark.parametrize("content", [b"", b"hello, this is no checkpoint\n", b"\x80\x02}q"],
                         ids=["empty", "text", "cut short"])
def test_a_file_that_is_no_checkpoint_is_one_clear_line(tmp_path: Path, capsys, content: bytes) -> None:
    (tmp_path / "EmoTalk.pth").write_bytes(content)
    assert convert(["--official", tmp_path / "EmoTalk.pth", "--out", tmp_path / "ours"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "is not a PyTorch checkpoint" in errors[0] and "EmoTalk.pth" in errors[0], errors


def test_wrong_shape_is_one_clear_line(tmp_path: Path, reference: EmoTalk, capsys) -> None:
    state = official_state(reference)
    state["audio_feature_map_cont.weight"] = torch.zeros(16, 40)
    torch.save(state, tmp_path / "EmoTalk.pth")
    assert convert(["--official", tmp_path / "EmoTalk.pth", "--out", tmp_path / "ours"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "does not fit model config large" in lines[0]
    assert "audio_feature_map_cont.weight is [16, 40] in the file, [16, 32] in the model" in lines[0]


def test_checkpoint_round_trip_hash_and_old_spelling(tmp_path: Path, reference: EmoTalk) -> None:
    folder = save_checkpoint(reference, tmp_path / "ckpt", extra={"seed": 7})
    weights = folder / "model.safetensors"
    assert model_hash(folder) == hashlib.sha256(weights.read_bytes()).hexdigest() == model_hash(weights)
    for path in (folder, weights):
        loaded = load_model(path)
        assert loaded.cfg.extra["seed"] == 7 and not loaded.training
        torch.testing.assert_close(run_outputs(loaded)[0], run_outputs(reference)[0], rtol=0, atol=0)
    save_file(old_spelling(load_file(weights)), weights)  # the other weight-norm spelling loads too
    torch.testing.assert_close(run_outputs(load_model(folder))[0], run_outputs(reference)[0], rtol=0, atol=0)


def test_a_checkpoint_from_before_the_familiar_region_loads_with_it_unset(tmp_path: Path, reference: EmoTalk) -> None:
    folder = save_checkpoint(reference, tmp_path / "ckpt")
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k not in FAMILIARITY_KEYS}, folder / "model.safetensors")
    head = load_model(folder).audio_encoder_emo.classifier
    assert not head.familiar_range.any()  # unset: the head trusts every voice, as it did
    torch.testing.assert_close(run_outputs(load_model(folder))[1], run_outputs(reference)[1], rtol=0, atol=0)


def test_load_model_names_keys_that_do_not_fit_the_config(tmp_path: Path, reference: EmoTalk) -> None:
    folder = save_checkpoint(reference, tmp_path / "ckpt")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["content_dim"] = 12
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError) as info:
        load_model(folder)
    message = str(info.value)
    assert "\n" not in message
    assert "does not fit model config large" in message
    assert "audio_feature_map_cont.weight is [16, 32] in the file, [12, 32] in the model" in message
    assert "more)" in message  # the decoder's widths differ too


def test_load_model_refuses_pickles_and_explains_missing_default(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "EmoTalk.pth").write_bytes(b"not even read")
    with pytest.raises(UserError, match="emotalk-import --official"):
        load_model(tmp_path / "EmoTalk.pth")
    monkeypatch.setattr(model_files, "DEFAULT_MODEL", tmp_path / "absent")
    with pytest.raises(UserError, match="bundled default model is missing"):
        load_model("default")
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nowhere")


def write_hf_folder(folder: Path, seed: int, fmt: str = "safetensors", classifier_labels: int = 0,
                    **config_changes) -> dict[str, torch.Tensor]:
    """A Hugging Face Wav2Vec2ForCTC-style folder; returns the backbone weights in our spelling."""
    backbone = randomize(Wav2Vec2Model(TINY_W2V), seed).state_dict()
    del backbone["lm_head.weight"], backbone["lm_head.bias"]  # HF keeps its CTC head outside wav2vec2.
    state = {f"wav2vec2.{k}": v for k, v in old_spelling(backbone).items()}
    state |= {"lm_head.weight": torch.randn(5, 32), "lm_head.bias": torch.randn(5)}
    config = HF_CONFIG | config_changes
    if classifier_labels:
        state |= {"classifier.dense.weight": torch.randn(32, 32), "classifier.dense.bias": torch.randn(32),
                  "classifier.out_proj.weight": torch.randn(classifier_labels, 32),
                  "classifier.out_proj.bias": torch.randn(classifier_labels)}
        config["id2label"] = {str(i): f"label{i}" for i in range(classifier_labels)}
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    if fmt == "safetensors":
        save_file(state, folder / "model.safetensors")
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return backbone


def assert_backbone_equal(module: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = module.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_hf_folder_builds_a_fresh_large_model(tmp_path: Path, fmt: str, capsys) -> None:
    backbone = write_hf_folder(tmp_path / "hf", seed=1, fmt=fmt, classifier_labels=3)
    assert convert(["--wav2vec2", tmp_path / "hf", "--target", "both", "--out", tmp_path / "ours"]) == 0
    assert "lm_head.weight" in capsys.readouterr().err  # the CTC head is reported, not imported
    model = load_model(tmp_path / "ours")
    assert model.cfg.family == "large" and model.cfg.content == dataclasses.replace(TINY_W2V, lm_head_vocab=32)
    assert model.cfg.d_model == 832 and model.cfg.emotion_labels == ("label0", "label1", "label2")
    assert_backbone_equal(model.audio_encoder_cont, backbone)
    assert_backbone_equal(model.audio_encoder_emo.wav2vec2, backbone)
    assert model.audio_encoder_emo.classifier.out_proj.weight.shape == (3, 32)
    blendshapes, logits = run_outputs(model)
    assert blendshapes.shape == (1, 30, 52) and logits.shape == (1, 3)


def test_hf_folder_into_official_content_encoder_only(tmp_path: Path, reference: EmoTalk) -> None:
    torch.save(official_state(reference), tmp_path / "EmoTalk.pth")
    backbone = write_hf_folder(tmp_path / "hf", seed=2)
    assert convert(["--official", tmp_path / "EmoTalk.pth", "--wav2vec2", tmp_path / "hf",
                    "--target", "content", "--out", tmp_path / "ours"]) == 0
    model = load_model(tmp_path / "ours")
    assert_backbone_equal(model.audio_encoder_cont, backbone)
    assert_backbone_equal(model.audio_encoder_emo, reference.audio_encoder_emo.state_dict())
    assert_backbone_equal(model.audio_encoder_cont.lm_head, reference.audio_encoder_cont.lm_head.state_dict())


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": 48}, "hidden 48 there, 32 here"),
    ({"do_stable_layer_norm": False}, "do_stable_layer_norm=False"),
])
def test_hf_folder_that_does_not_fit_is_refused(tmp_path: Path, reference: EmoTalk, capsys, change, message) -> None:
    torch.save(official_state(reference), tmp_path / "EmoTalk.pth")
    write_hf_folder(tmp_path / "hf", seed=2, **change)
    assert convert(["--official", tmp_path / "EmoTalk.pth", "--wav2vec2", tmp_path / "hf",
                    "--target", "emotion", "--out", tmp_path / "ours"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


@pytest.mark.parametrize("grad", [False, True])
def test_large_family_forward_batch_1_and_2(reference: EmoTalk, grad: bool) -> None:
    """The official 3D mask broke newer PyTorch (fast path) and batch > 1; ours must not."""
    gen = torch.Generator().manual_seed(5)
    audio = torch.randn(2, 12000, generator=gen) * 0.2
    level, person = torch.tensor([1, 0]), torch.tensor([0, 7])
    with torch.set_grad_enabled(grad):
        both, logits = reference(audio, level, person)
        singles = [reference(audio[i:i + 1], level[i:i + 1], person[i:i + 1]) for i in range(2)]
    assert both.shape == (2, 23, 52) and logits.shape == (2, 7)
    for i, (one, one_logits) in enumerate(singles):
        torch.testing.assert_close(both[i:i + 1], one, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits[i:i + 1], one_logits, rtol=1e-5, atol=1e-5)
