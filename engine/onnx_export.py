"""Export the `small` streaming step to an engine artifact: ONNX (and a TensorRT plan when asked).

Needs the `train` extra (PyTorch, onnx, onnxscript); running the artifact needs only ONNX Runtime.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch

from ..training.errors import UserError
from ..training.model import EmoTalk
from .artifact import ONNX_FILE, OPSET, PLAN_FILE, Manifest, write_manifest
from .interface import frames_from_ms, graph_outputs, state_input
from .small_step import SmallStreamingStep, step_interface
from .torch_backend import prototype_labels


class FlatStep(torch.nn.Module):
    """The step with positional tensors in and out, the form ONNX export takes."""

    def __init__(self, step: SmallStreamingStep):
        super().__init__()
        self.step = step
        self.n_inputs = len(step.input_specs())
        self.state_names = [s.name for s in step.state_specs()]
        self.ring_names = [s.name for s in step.state_specs() if s.ring_axis is not None]
        self.output_names = [s.name for s in step.output_specs()]

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        states = dict(zip(self.state_names, tensors[self.n_inputs:]))
        outputs, new, at = self.step(*tensors[: self.n_inputs], states)
        return (tuple(outputs[n] for n in self.output_names) + tuple(new[n] for n in self.state_names)
                + tuple(at[n] for n in self.ring_names))


def export_onnx(step: SmallStreamingStep, path: Path, max_streams: int) -> None:
    """Write the step as ONNX: static shapes but for the batch axis (1..max_streams), states as
    explicit inputs (`state_X`) and outputs (`next_X`, and `at_X` for a ring's rows)."""
    interface = step_interface(step)
    example = [torch.zeros((2, *s.shape), dtype=getattr(torch, s.dtype)) for s in interface.inputs + interface.states]
    batch = torch.export.Dim("batch", min=1, max=max(2, max_streams))
    names_in = [s.name for s in interface.inputs] + [state_input(s.name) for s in interface.states]
    names_out = graph_outputs(interface)
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx.experimental"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")
        torch.onnx.export(FlatStep(step.eval()), tuple(example), str(path), input_names=names_in,
                          output_names=names_out, dynamic_shapes=(tuple({0: batch} for _ in example),),
                          opset_version=OPSET, dynamo=True, optimize=True, external_data=False, verbose=False)


def export_artifact(model: EmoTalk, source_sha256: str, out: Path, backend: str, hop_ms: int,
                    lookahead_ms: int, fp16: bool = False, max_streams: int = 64) -> Manifest:
    """Build the engine artifact in `out` (ONNX always; a TensorRT plan for backend "tensorrt")."""
    hop, lookahead = frames_from_ms(hop_ms, "--hop-ms", 1), frames_from_ms(lookahead_ms, "--lookahead-ms", 0)
    if fp16 and backend != "tensorrt":
        raise UserError("--fp16 applies to TensorRT plans; the ONNX artifact runs in fp32 on ONNX Runtime")
    if max_streams < 1:
        raise UserError(f"--max-streams {max_streams} must be at least 1")
    step = SmallStreamingStep(model.float().eval(), hop, lookahead, ring=backend != "tensorrt")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            export_onnx(step, Path(tmp) / ONNX_FILE, max_streams)
            os.replace(Path(tmp) / ONNX_FILE, out / ONNX_FILE)
    except OSError as exc:
        raise UserError(f"cannot write the engine to {out} ({exc}): check the folder is writable") from exc
    manifest = Manifest(
        model=json.loads(model.cfg.to_json()), source_sha256=source_sha256, hop_ms=hop_ms,
        lookahead_ms=lookahead_ms, interface=step_interface(step).as_dict(),
        backend=backend, precision="fp16" if fp16 else "fp32", max_streams=max_streams,
        prototype_labels=prototype_labels(model))
    (out / PLAN_FILE).unlink(missing_ok=True)
    if backend == "tensorrt":
        from .tensorrt_backend import build_plan
        build_plan(out / ONNX_FILE, out / PLAN_FILE, manifest.step_interface, max_streams, fp16)
    write_manifest(out, manifest)
    return manifest
