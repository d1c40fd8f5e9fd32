"""The step as a PyTorch module, on CPU or CUDA: the reference every other backend is compared with.

Needs the `train` extra (PyTorch); the runtime backends in `backends.py` do not import this module.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..training.checkpoint import load_model
from ..training.errors import UserError
from ..training.model import EmoTalk
from ..training.model_files import model_hash, resolve_checkpoint
from ..training.offline import prototypes_present
from .backends import IndexedPoolBackend, contiguous
from .interface import PREROLL, StepInterface, TensorSpec
from .small_step import SmallStreamingStep, step_interface
from .window_step import WindowStreamingStep


class TorchBackend(IndexedPoolBackend):
    """The step as a PyTorch module, on CPU or CUDA: the reference the others are compared with."""

    name = "torch"

    def __init__(self, step: torch.nn.Module, interface: StepInterface, device: str = "cpu"):
        super().__init__(interface)
        try:
            self.device = torch.device(device)
            self.step = step.to(self.device).eval()
        except (RuntimeError, AssertionError) as exc:
            raise UserError(f"torch device {device!r} is not available here ({exc}): use --device cpu") from exc

    def spare(self) -> "TorchBackend":
        return TorchBackend(self.step, self.interface, str(self.device))  # the module holds no state

    def _zeros(self, spec: TensorSpec, rows: int) -> torch.Tensor:
        return torch.zeros((rows, *spec.shape), dtype=getattr(torch, spec.dtype), device=self.device)

    @torch.inference_mode()
    def run(self, slots: np.ndarray, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        span = contiguous(slots)
        index = torch.as_tensor(slots, device=self.device)
        states = {name: pool[span] if span else pool.index_select(0, index) for name, pool in self.pools.items()}
        args = [torch.as_tensor(inputs[spec.name]).to(self.device) for spec in self.interface.inputs]
        outputs, new, at = self.step(*args, states)
        for spec in self.interface.states:
            pool = self.pools[spec.name]
            if spec.ring_axis is not None:  # as backends.write_ring_rows, on the device
                batch, row = torch.nonzero(at[spec.name] >= 0, as_tuple=True)
                axis = spec.ring_axis + 1
                pool.movedim(axis, 1)[index[batch], at[spec.name][batch, row]] = new[spec.name].movedim(axis, 1)[batch, row]
            elif span:
                pool[span] = new[spec.name]
            else:
                pool.index_copy_(0, index, new[spec.name])
        return {name: value.cpu().numpy() for name, value in outputs.items()}


def checkpoint_model(source: str | Path | EmoTalk, device: str) -> tuple[EmoTalk, str]:
    """The model of a checkpoint folder ("default": the bundled one) or an in-memory module, in
    eval mode, and the sha256 that names it in an exported artifact."""
    if isinstance(source, EmoTalk):
        return source.eval(), "in-memory"
    folder = resolve_checkpoint(source)
    return load_model(folder, device), model_hash(folder)


def prototype_labels(model: EmoTalk) -> list[str]:
    """Labels whose emotion prototype exists (an override towards any other label is refused)."""
    return [label for label, ok in zip(model.cfg.emotion_labels, prototypes_present(model)) if ok]


def step_backend(model: EmoTalk, hop_frames: int, lookahead: int, device: str,
                 threads: int | None) -> tuple[TorchBackend, int]:
    """The model's streaming step on the torch backend, and the zeros it expects before a stream:
    `small` streams exactly, `large` with sliding windows."""
    if threads:
        torch.set_num_threads(threads)  # process-wide: PyTorch has no per-module thread setting
    if model.cfg.content.kind == "streaming":
        step: torch.nn.Module = SmallStreamingStep(model, hop_frames, lookahead)
        preroll = PREROLL
    else:
        step, preroll = WindowStreamingStep(model, hop_frames, lookahead), 0
    return TorchBackend(step, step_interface(step), device), preroll
