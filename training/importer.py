"""emotalk-import: official EmoTalk.pth and Hugging Face wav2vec2 folders -> our checkpoint format.

    emotalk-import --official EmoTalk.pth --out DIR
    emotalk-import --official EmoTalk.pth --wav2vec2 HF_FOLDER --target content --out DIR
    emotalk-import --wav2vec2 HF_FOLDER [--target content|emotion|both] --out DIR

The official file is a pickle, read with `torch.load(weights_only=True)` only: anything but plain
tensors and containers is refused, so a malicious file cannot run code. Sizes are inferred from the
tensor shapes (a `large`-family config), both weight-norm spellings are accepted, and every missing
or unexpected key is reported by name. Without --official, --wav2vec2 builds a fresh `large` model
(random projections and decoder) around the imported backbone(s).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from .checkpoint import describe_mismatch, normalize_weight_norm_keys, save_checkpoint
from .model_files import file_sha256
from .config import OFFICIAL_EMOTIONS, EncoderConfig, ModelConfig, large
from .errors import UserError, add_debug_flag, run_cli
from .model import FAMILIARITY_KEYS, EmoTalk

PROG = "emotalk-import"
BACKBONES = {"content": "audio_encoder_cont.", "emotion": "audio_encoder_emo.wav2vec2."}
# Backbone keys the forward pass never uses: their absence is reported, not fatal.
UNUSED_BACKBONE_KEYS = ("masked_spec_embed", "lm_head.weight", "lm_head.bias")
OURS_ONLY = ("emotion_prototypes", *FAMILIARITY_KEYS)  # our buffers, not in official checkpoints: stay zeros
HEAD_DIM = 64  # wav2vec2 heads are 64 wide (1024 / 16 in XLSR); the count is not in the shapes
POS_CONV_V = "encoder.pos_conv_embed.conv.parametrizations.weight.original1"
# Hugging Face Wav2Vec2Config defaults, for keys a config.json leaves out.
HF_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16, "conv_bias": False,
    "feat_extract_norm": "group", "do_stable_layer_norm": False, "hidden_act": "gelu",
    "feat_extract_activation": "gelu",
}


def progress(message: str) -> None:
    print(f"{PROG}: {message}", flush=True)


def report(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _need(state: Mapping[str, Tensor], key: str, source: str) -> Tensor:
    if key not in state:
        raise UserError(f"{source} has no {key}: it is not an EmoTalk checkpoint of the official layout")
    return state[key]


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    """How many consecutive indices i have `pattern.format(i)` in the state."""
    n = 0
    while pattern.format(n) in state:
        n += 1
    return n


def generic_labels(n: int) -> tuple[str, ...]:
    return tuple(f"emotion{i}" for i in range(n))


def _unpickle_reason(exc: pickle.UnpicklingError) -> str:
    """The one useful line of torch's long weights_only message, e.g. the global it refused; never
    its advice to load the file unrestricted, which is how a malicious file runs code."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].split(" Please use")[0].strip().rstrip(".")
    told = [line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation"))]
    return (told or [type(exc).__name__])[0].rstrip(".")


def torch_load_tensors(path: Path) -> Any:
    """torch.load with weights_only=True: a file that needs anything but tensors is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickle_reason(exc)
        if not reason:
            raise UserError(f"{path} is not a PyTorch checkpoint: give the official EmoTalk.pth") from exc
        raise UserError(f"refusing to unpickle {path}: not a plain state_dict ({reason}); "
                        f"load it only if you trust it, and save its state_dict alone") from exc
    except FileNotFoundError as exc:
        raise UserError(f"{path} not found") from exc
    except (EOFError, KeyError, ValueError, IndexError) as exc:  # no pickle at all, or one cut short
        raise UserError(f"{path} is not a PyTorch checkpoint (empty, cut short or another format): "
                        f"give the official EmoTalk.pth") from exc
    except (OSError, RuntimeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc


def read_official(path: Path) -> dict[str, Tensor]:
    """The official state_dict: bare, or under "state_dict"/"model"; DataParallel prefix stripped."""
    obj = torch_load_tensors(path)
    if isinstance(obj, dict) and not all(isinstance(v, Tensor) for v in obj.values()):
        obj = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), None)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path} holds no state_dict of tensors (looked at the top level, 'state_dict', 'model')")
    return normalize_weight_norm_keys({k.removeprefix("module."): v for k, v in obj.items()})


def infer_encoder(state: Mapping[str, Tensor], prefix: str, source: str) -> EncoderConfig:
    """A wav2vec2 EncoderConfig from the shapes under `prefix`."""
    hidden, conv_dim = _need(state, prefix + "feature_projection.projection.weight", source).shape
    conv = prefix + "feature_extractor.conv_layers.{}.conv.weight"
    kernels = tuple(state[conv.format(i)].shape[2] for i in range(_count(state, conv)))
    default = EncoderConfig(kind="wav2vec2", hidden=hidden, layers=0, heads=1, ffn=0)
    if len(kernels) != len(default.conv_strides):
        raise UserError(f"{source} has {len(kernels)} conv layers under {prefix}feature_extractor: "
                        f"only wav2vec2's {len(default.conv_strides)} (50 Hz features) are supported")
    layers = _count(state, prefix + "encoder.layers.{}.attention.q_proj.weight")
    ffn = _need(state, prefix + "encoder.layers.0.feed_forward.intermediate_dense.weight", source).shape[0]
    pos_v = _need(state, prefix + POS_CONV_V, source)
    lm_head = state.get(prefix + "lm_head.weight")
    return dataclasses.replace(
        default, layers=layers, heads=max(1, hidden // HEAD_DIM), ffn=ffn, conv_dim=conv_dim,
        conv_kernels=kernels, pos_conv_kernel=pos_v.shape[2], pos_conv_groups=hidden // pos_v.shape[1],
        lm_head_vocab=lm_head.shape[0] if lm_head is not None else default.lm_head_vocab,
    )


def infer_config(state: Mapping[str, Tensor], source: str) -> ModelConfig:
    """A `large`-family ModelConfig whose every size comes from the official tensors' shapes."""
    def shape(key: str) -> torch.Size:
        return _need(state, key, source).shape

    n_labels = shape("audio_encoder_emo.classifier.out_proj.weight")[0]
    labels = OFFICIAL_EMOTIONS if n_labels == len(OFFICIAL_EMOTIONS) else generic_labels(n_labels)
    level_dim, n_levels = shape("obj_vector_level.weight")
    person_dim, n_persons = shape("obj_vector_person.weight")
    cfg = dataclasses.replace(
        large(),
        content=infer_encoder(state, BACKBONES["content"], source),
        emotion=infer_encoder(state, BACKBONES["emotion"], source),
        content_dim=shape("audio_feature_map_cont.weight")[0],
        emotion_dim=shape("audio_feature_map_emo2.weight")[0],
        level_dim=level_dim, n_levels=n_levels, person_dim=person_dim, n_persons=n_persons,
        decoder_ffn=shape("transformer_decoder.layers.0.linear1.weight")[0],
        decoder_layers=_count(state, "transformer_decoder.layers.{}.linear1.weight"),
        emotion_labels=labels,
    )
    d_model = shape("audio_feature_map_emo.weight")[0]
    if d_model != cfg.d_model or d_model % cfg.decoder_heads:
        raise UserError(f"{source}: decoder width {d_model} is not content {cfg.content_dim} + emotion "
                        f"{cfg.emotion_dim} + level {level_dim} + person {person_dim} divisible by "
                        f"{cfg.decoder_heads} heads, as the EmoTalk layout needs")
    if shape("bs_map_r.weight")[0] != len(cfg.blendshapes):
        raise UserError(f"{source}: bs_map_r has {shape('bs_map_r.weight')[0]} outputs, "
                        f"not the {len(cfg.blendshapes)} ARKit blendshapes")
    return cfg


def _unused_keys(prefixes: Iterable[str]) -> frozenset[str]:
    return frozenset(p + k for p in prefixes for k in UNUSED_BACKBONE_KEYS)


def import_official(path: Path) -> EmoTalk:
    """Build the model the checkpoint's shapes describe and load it, reporting every odd key."""
    source = f"checkpoint {path}"
    state = read_official(path)
    cfg = infer_config(state, source)
    model = EmoTalk(cfg)
    expected = model.state_dict()
    for key in OURS_ONLY:
        expected.pop(key)
    unused = _unused_keys(BACKBONES.values())
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        report(f"unexpected in {path} (ignored): {', '.join(unexpected)}")
    if missing:
        tolerable = all(k in unused for k in missing)
        note = "unused by the model, left at their initial values" if tolerable else "required"
        report(f"missing from {path} ({note}): {', '.join(missing)}")
    known = {k: v for k, v in state.items() if k in expected}
    problem = describe_mismatch(source, cfg, expected, known, ignore_missing=unused)
    if problem:
        raise UserError(problem)
    model.load_state_dict(known, strict=False)
    return model


def read_hf_folder(folder: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A local Hugging Face wav2vec2 folder: its config.json and its weights (safetensors or .bin)."""
    try:
        hf_cfg = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {folder / 'config.json'}: {exc}: give a Hugging Face model folder") from exc
    index = folder / "model.safetensors.index.json"
    try:
        if (folder / "model.safetensors").is_file():
            return hf_cfg, load_file(str(folder / "model.safetensors"))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return hf_cfg, {k: v for s in shards for k, v in load_file(str(folder / s)).items()}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read the weights in {folder}: {exc}") from exc
    if (folder / "pytorch_model.bin").is_file():
        state = torch_load_tensors(folder / "pytorch_model.bin")
        if isinstance(state, dict) and all(isinstance(v, Tensor) for v in state.values()):
            return hf_cfg, state
        raise UserError(f"{folder / 'pytorch_model.bin'} holds no state_dict of tensors")
    raise UserError(f"{folder} has no model.safetensors or pytorch_model.bin")


def split_hf_state(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(backbone keys without the `wav2vec2.` prefix, the task heads' keys)."""
    if not any(k.startswith("wav2vec2.") for k in state):
        return normalize_weight_norm_keys(state), {}
    backbone = {k.removeprefix("wav2vec2."): v for k, v in state.items() if k.startswith("wav2vec2.")}
    heads = {k: v for k, v in state.items() if not k.startswith("wav2vec2.")}
    return normalize_weight_norm_keys(backbone), heads


def encoder_from_hf(hf_cfg: Mapping[str, Any], source: str) -> EncoderConfig:
    """Our EncoderConfig for a Hugging Face Wav2Vec2Config; refuses what our backbone cannot run."""
    c = {**HF_DEFAULTS, **hf_cfg}
    required = {"do_stable_layer_norm": True, "feat_extract_norm": "layer", "conv_bias": True,
                "hidden_act": "gelu", "feat_extract_activation": "gelu"}
    wrong = [f"{k}={c[k]!r} (need {v!r})" for k, v in required.items() if c[k] != v]
    if len(set(c["conv_dim"])) != 1:
        wrong.append(f"conv_dim={c['conv_dim']} (need one width for all conv layers)")
    if wrong:
        raise UserError(f"{source} is not a stable-layer-norm wav2vec2 like XLSR-53: {', '.join(wrong)}")
    return EncoderConfig(
        kind="wav2vec2", hidden=c["hidden_size"], layers=c["num_hidden_layers"],
        heads=c["num_attention_heads"], ffn=c["intermediate_size"], conv_dim=c["conv_dim"][0],
        conv_kernels=tuple(c["conv_kernel"]), conv_strides=tuple(c["conv_stride"]),
        pos_conv_kernel=c["num_conv_pos_embeddings"], pos_conv_groups=c["num_conv_pos_embedding_groups"],
    )


SIZE_FIELDS = ("hidden", "layers", "heads", "ffn", "conv_dim", "conv_kernels", "conv_strides",
               "pos_conv_kernel", "pos_conv_groups")


def check_encoder_fits(hf_enc: EncoderConfig, ours: EncoderConfig, source: str, target: str) -> None:
    diffs = [f"{f} {getattr(hf_enc, f)} there, {getattr(ours, f)} here"
             for f in SIZE_FIELDS if getattr(hf_enc, f) != getattr(ours, f)]
    if diffs:
        raise UserError(f"{source} does not fit the {target} encoder: {'; '.join(diffs)}")


def hf_classifier(heads: Mapping[str, Tensor],
                  hf_cfg: Mapping[str, Any]) -> tuple[dict[str, Tensor], tuple[str, ...]] | None:
    """The emotion head of an EmoTalk-style Wav2Vec2ForSpeechClassification, with its label names."""
    keys = [f"classifier.{m}.{p}" for m in ("dense", "out_proj") for p in ("weight", "bias")]
    if not all(k in heads for k in keys):
        return None
    n = heads["classifier.out_proj.weight"].shape[0]
    id2label = {int(i): name for i, name in hf_cfg.get("id2label", {}).items()}
    labels = tuple(id2label[i] for i in range(n)) if set(id2label) == set(range(n)) else generic_labels(n)
    return {k.removeprefix("classifier."): heads[k] for k in keys}, labels


def import_backbone(model: EmoTalk, backbone: Mapping[str, Tensor], targets: list[str], source: str) -> None:
    """Copy a wav2vec2 backbone into the targeted encoder(s); unused keys may be absent."""
    expected: dict[str, Tensor] = {}
    for target in targets:
        module = model.audio_encoder_cont if target == "content" else model.audio_encoder_emo.wav2vec2
        expected = module.state_dict()
        known = {k: v for k, v in backbone.items() if k in expected}
        missing = [k for k in expected if k not in known]
        if missing:
            report(f"not in {source}, kept as they were in the {target} encoder: {', '.join(missing)}")
        problem = describe_mismatch(f"{source} ({target} encoder)", model.cfg, expected, known,
                                    ignore_missing=_unused_keys([""]))
        if problem:
            raise UserError(problem)
        module.load_state_dict(known, strict=False)
    ignored = [k for k in backbone if k not in expected]
    if ignored:
        report(f"unexpected in {source} (ignored): {', '.join(ignored)}")


def import_wav2vec2(folder: Path, targets: list[str], model: EmoTalk | None) -> EmoTalk:
    """Put a Hugging Face backbone into `model`'s targeted encoders, or into a fresh `large` model.

    A fresh model takes the folder's encoder sizes and, when the emotion encoder is targeted and the
    folder has an EmoTalk-style `classifier.dense/out_proj` head, that head and its labels too.
    """
    source = f"wav2vec2 folder {folder}"
    names = " and ".join(targets)
    progress(f"reading {folder}")
    hf_cfg, state = read_hf_folder(folder)
    hf_enc = encoder_from_hf(hf_cfg, source)
    backbone, heads = split_hf_state(state)
    classifier = hf_classifier(heads, hf_cfg) if "emotion" in targets and model is None else None
    if model is None:
        progress(f"building a fresh large model around the {names} encoder")
        cfg = large()
        for target in targets:
            cfg = dataclasses.replace(cfg, **{target: dataclasses.replace(hf_enc)})
        if classifier:
            cfg = dataclasses.replace(cfg, emotion_labels=classifier[1])
        model = EmoTalk(cfg)
    for target in targets:
        check_encoder_fits(hf_enc, getattr(model.cfg, target), source, target)
    progress(f"importing the backbone into the {names} encoder")
    import_backbone(model, backbone, targets, source)
    if classifier:
        model.audio_encoder_emo.classifier.load_state_dict(classifier[0], strict=False)  # no familiar region: unset
    unused_heads = [k for k in heads if not (classifier and k.startswith("classifier."))]
    if unused_heads:
        report(f"task-head keys in {source} not imported: {', '.join(unused_heads)}")
    return model


def run(args: argparse.Namespace) -> None:
    if not (args.official or args.wav2vec2):
        raise UserError("nothing to import: give --official EmoTalk.pth and/or --wav2vec2 HF_FOLDER")
    extra: dict[str, Any] = {}
    model = None
    if args.official:
        progress(f"reading {args.official}")
        model = import_official(args.official)
        extra.update(source_official=args.official.name, source_official_sha256=file_sha256(args.official))
    if args.wav2vec2:
        targets = ["content", "emotion"] if args.target == "both" else [args.target]
        model = import_wav2vec2(args.wav2vec2, targets, model)
        extra.update(source_wav2vec2=str(args.wav2vec2), wav2vec2_target=args.target)
    progress(f"writing {args.out}")
    save_checkpoint(model, args.out, extra=extra)
    params = sum(p.numel() for p in model.parameters())
    progress(f"wrote {args.out} ({model.cfg.family}, {params:,} parameters)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, help="official EmoTalk.pth (read with weights_only=True)")
    parser.add_argument("--wav2vec2", type=Path, metavar="HF_FOLDER",
                        help="local Hugging Face wav2vec2 folder: config.json + model.safetensors "
                             "(or pytorch_model.bin, read with weights_only=True)")
    parser.add_argument("--target", choices=("content", "emotion", "both"), default="both",
                        help="encoder(s) that receive the --wav2vec2 backbone (default: both); without "
                             "--official, the others keep the large layout with random weights")
    parser.add_argument("--out", type=Path, required=True, help="output checkpoint folder")
    add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
