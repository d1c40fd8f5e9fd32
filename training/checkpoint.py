"""Our checkpoint format: a folder with `model.safetensors` and `config.json` (ModelConfig).

Weights are only ever read from safetensors, never unpickled; official `.pth` files go through
`emotalk-import` first. Loading checks every key and shape against the config and says, in one
line, what does not fit.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .config import ModelConfig
from .errors import UserError
from .model import FAMILIARITY_KEYS, EmoTalk
from .model_files import CONFIG_FILE, WEIGHTS_FILE, resolve_checkpoint


# torch.nn.utils.weight_norm (old) -> torch.nn.utils.parametrizations.weight_norm (ours).
_WEIGHT_NORM_SPELLINGS = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
}
_SHOWN = 3  # keys named in one error line before "(and N more)"


def normalize_weight_norm_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename `X.weight_g`/`X.weight_v` to our `X.parametrizations.weight.original0/1`."""
    renamed = {}
    for key, value in state.items():
        head, _, leaf = key.rpartition(".")
        if leaf in _WEIGHT_NORM_SPELLINGS:
            key = f"{head}.{_WEIGHT_NORM_SPELLINGS[leaf]}" if head else _WEIGHT_NORM_SPELLINGS[leaf]
        renamed[key] = value
    return renamed


def _names(keys: list[str]) -> str:
    more = f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _shape(t: Tensor) -> str:
    return str(list(t.shape))


def shape_mismatches(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> list[str]:
    """Keys present in both whose shapes differ, in the model's key order."""
    return [k for k in expected if k in found and found[k].shape != expected[k].shape]


def describe_mismatch(source: str, cfg: ModelConfig, expected: Mapping[str, Tensor],
                      found: Mapping[str, Tensor], ignore_missing: frozenset[str] = frozenset()) -> str | None:
    """One line naming the first keys whose shapes differ, or that are missing or unexpected; None if all fit."""
    wrong = shape_mismatches(expected, found)
    missing = [k for k in expected if k not in found and k not in ignore_missing]
    unexpected = [k for k in found if k not in expected]
    if not (wrong or missing or unexpected):
        return None
    parts = []
    if wrong:
        shapes = [f"{k} is {_shape(found[k])} in the file, {_shape(expected[k])} in the model" for k in wrong[:_SHOWN]]
        more = f" (and {len(wrong) - _SHOWN} more)" if len(wrong) > _SHOWN else ""
        parts.append(", ".join(shapes) + more)
    if missing:
        parts.append(f"missing keys {_names(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_names(unexpected)}")
    return f"{source} does not fit model config {cfg.family}: {'; '.join(parts)}"


def save_checkpoint(model: EmoTalk, folder: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` + `config.json`; `extra` (provenance) is merged into config.extra.

    Each file is written beside its final name and renamed, so a crash never leaves half a file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(model.cfg, extra={**model.cfg.extra, **(extra or {})})
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "family": cfg.family})
    os.replace(tmp, folder / WEIGHTS_FILE)
    tmp = folder / (CONFIG_FILE + ".tmp")
    cfg.save(tmp)
    os.replace(tmp, folder / CONFIG_FILE)
    return folder


def load_model(path_or_default: str | Path, device: str | torch.device = "cpu") -> EmoTalk:
    """Build the model its config.json describes and load its weights (eval mode, on `device`)."""
    folder = resolve_checkpoint(path_or_default)
    cfg = ModelConfig.load(folder / CONFIG_FILE)
    try:
        state = normalize_weight_norm_keys(load_file(str(folder / WEIGHTS_FILE)))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"cannot read {folder / WEIGHTS_FILE}: {exc}") from exc
    model = EmoTalk(cfg)
    problem = describe_mismatch(f"checkpoint {folder}", cfg, model.state_dict(), state,
                                ignore_missing=frozenset(FAMILIARITY_KEYS))
    if problem:
        raise UserError(f"{problem}: the weights do not match config.json; re-save the checkpoint "
                        f"or re-import it with emotalk-import")
    model.load_state_dict(state, strict=False)  # every key but the optional ones was checked above
    return model.to(device).eval()
