"""`large` has the official EmoTalk state_dict, key for key and shape for shape.

The expected table is written out from the official checkpoint's state_dict (github.com/psyai-net/EmoTalk_release), not
derived from our model, so a renamed module or a wrong size fails here. The model is built on the
meta device: 640 M parameters, no memory.
"""
from __future__ import annotations

import pytest
import torch

from emotalk_stream.training import config
from emotalk_stream.training.importer import OURS_ONLY
from emotalk_stream.training.model import FAMILIARITY_KEYS, EmoTalk

OFFICIAL_TENSORS = 882
OFFICIAL_PARAMETERS = 640_570_427
WEIGHT_NORM_G = "encoder.pos_conv_embed.conv.weight_g"
WEIGHT_NORM_V = "encoder.pos_conv_embed.conv.weight_v"
PARAMETRIZED_G = "encoder.pos_conv_embed.conv.parametrizations.weight.original0"
PARAMETRIZED_V = "encoder.pos_conv_embed.conv.parametrizations.weight.original1"


def wav2vec2_keys(prefix: str) -> dict[str, tuple[int, ...]]:
    """One XLSR-53 large backbone as the official checkpoint names it (old weight-norm spelling)."""
    keys: dict[str, tuple[int, ...]] = {f"{prefix}masked_spec_embed": (1024,)}
    for c in range(7):
        kernel_in = {0: (1, 10), 5: (512, 2), 6: (512, 2)}.get(c, (512, 3))
        p = f"{prefix}feature_extractor.conv_layers.{c}."
        keys[p + "conv.weight"] = (512, *kernel_in)
        keys[p + "conv.bias"] = (512,)
        keys[p + "layer_norm.weight"] = (512,)
        keys[p + "layer_norm.bias"] = (512,)
    keys[f"{prefix}feature_projection.layer_norm.weight"] = (512,)
    keys[f"{prefix}feature_projection.layer_norm.bias"] = (512,)
    keys[f"{prefix}feature_projection.projection.weight"] = (1024, 512)
    keys[f"{prefix}feature_projection.projection.bias"] = (1024,)
    keys[f"{prefix}encoder.pos_conv_embed.conv.bias"] = (1024,)
    keys[prefix + WEIGHT_NORM_G] = (1, 1, 128)
    keys[prefix + WEIGHT_NORM_V] = (1024, 64, 128)
    keys[f"{prefix}encoder.layer_norm.weight"] = (1024,)
    keys[f"{prefix}encoder.layer_norm.bias"] = (1024,)
    for layer in range(24):
        p = f"{prefix}encoder.layers.{layer}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            keys[f"{p}attention.{proj}.weight"] = (1024, 1024)
            keys[f"{p}attention.{proj}.bias"] = (1024,)
        for norm in ("layer_norm", "final_layer_norm"):
            keys[f"{p}{norm}.weight"] = (1024,)
            keys[f"{p}{norm}.bias"] = (1024,)
        keys[f"{p}feed_forward.intermediate_dense.weight"] = (4096, 1024)
        keys[f"{p}feed_forward.intermediate_dense.bias"] = (4096,)
        keys[f"{p}feed_forward.output_dense.weight"] = (1024, 4096)
        keys[f"{p}feed_forward.output_dense.bias"] = (1024,)
    keys[f"{prefix}lm_head.weight"] = (32, 1024)
    keys[f"{prefix}lm_head.bias"] = (32,)
    return keys


def official_keys() -> dict[str, tuple[int, ...]]:
    keys = wav2vec2_keys("audio_encoder_cont.") | wav2vec2_keys("audio_encoder_emo.wav2vec2.")
    keys |= {
        "audio_encoder_emo.classifier.dense.weight": (1024, 1024),
        "audio_encoder_emo.classifier.dense.bias": (1024,),
        "audio_encoder_emo.classifier.out_proj.weight": (7, 1024),
        "audio_encoder_emo.classifier.out_proj.bias": (7,),
        "audio_feature_map_cont.weight": (512, 1024), "audio_feature_map_cont.bias": (512,),
        "audio_feature_map_emo.weight": (832, 1024), "audio_feature_map_emo.bias": (832,),
        "audio_feature_map_emo2.weight": (256, 832), "audio_feature_map_emo2.bias": (256,),
        "obj_vector_level.weight": (32, 2), "obj_vector_level.bias": (32,),
        "obj_vector_person.weight": (32, 24), "obj_vector_person.bias": (32,),
        "bs_map_r.weight": (52, 832), "bs_map_r.bias": (52,),
    }
    d = "transformer_decoder.layers.0."
    for attn in ("self_attn", "multihead_attn"):
        keys |= {
            f"{d}{attn}.in_proj_weight": (2496, 832), f"{d}{attn}.in_proj_bias": (2496,),
            f"{d}{attn}.out_proj.weight": (832, 832), f"{d}{attn}.out_proj.bias": (832,),
        }
    keys |= {f"{d}linear1.weight": (832, 832), f"{d}linear1.bias": (832,),
             f"{d}linear2.weight": (832, 832), f"{d}linear2.bias": (832,)}
    keys |= {f"{d}norm{i}.{p}": (832,) for i in (1, 2, 3) for p in ("weight", "bias")}
    return keys


def as_ours(key: str) -> str:
    """The official weight-norm spelling -> ours (torch.nn.utils.parametrizations)."""
    return key.replace(WEIGHT_NORM_G, PARAMETRIZED_G).replace(WEIGHT_NORM_V, PARAMETRIZED_V)


@pytest.fixture(scope="module")
def large_model() -> EmoTalk:
    with torch.device("meta"):
        return EmoTalk(config.large())


def test_reference_table_has_the_official_count() -> None:
    expected = official_keys()
    assert len(expected) == OFFICIAL_TENSORS
    assert sum(torch.Size(s).numel() for s in expected.values()) == OFFICIAL_PARAMETERS


def test_every_official_key_exists_with_its_shape(large_model: EmoTalk) -> None:
    ours = {k: tuple(v.shape) for k, v in large_model.state_dict().items()}
    wrong = {k: (shape, ours.get(as_ours(k))) for k, shape in official_keys().items()
             if ours.get(as_ours(k)) != shape}
    assert not wrong, f"official key: (official shape, ours): {wrong}"


def test_only_our_buffers_are_extra(large_model: EmoTalk) -> None:
    official = {as_ours(k) for k in official_keys()}
    extra = set(large_model.state_dict()) - official
    assert extra == set(OURS_ONLY) == {"emotion_prototypes", *FAMILIARITY_KEYS}
    assert len(large_model.state_dict()) == OFFICIAL_TENSORS + len(OURS_ONLY)


def test_parameter_count_is_exact(large_model: EmoTalk) -> None:
    assert sum(p.numel() for p in large_model.parameters()) == OFFICIAL_PARAMETERS


def test_both_weight_norm_spellings_map_to_ours() -> None:
    from emotalk_stream.training.checkpoint import normalize_weight_norm_keys

    old = {"audio_encoder_cont." + WEIGHT_NORM_G: torch.zeros(1), "audio_encoder_cont." + WEIGHT_NORM_V: torch.zeros(1)}
    new = {"audio_encoder_cont." + PARAMETRIZED_G: torch.zeros(1), "audio_encoder_cont." + PARAMETRIZED_V: torch.zeros(1)}
    assert set(normalize_weight_norm_keys(old)) == set(new)
    assert set(normalize_weight_norm_keys(new)) == set(new)
