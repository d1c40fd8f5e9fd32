"""The engine artifact: a folder with `manifest.json`, `model.onnx` and, for TensorRT, `model.plan`.

The manifest says everything a loader must agree with: the model config, hop and look-ahead, the
step's input/output/state tensors, backend, precision and the hashes of the source checkpoint and
of every file. `read_manifest` refuses an artifact whose files changed, that another engine
version wrote, or whose tensors are not the ones this version's step has.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..training.checkpoint import file_sha256
from ..training.config import ModelConfig
from ..training.errors import UserError
from ..training.model import EmoTalk
from .backends import StepInterface, state_input, state_output
from .small_step import SmallStreamingStep
from .window_step import WindowStreamingStep

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
ARTIFACT_FORMAT = "emotalk-engine"
ARTIFACT_VERSION = 2  # 2: hops shifted by PREROLL samples, 240 samples of audio context
OPSET = 18
ENCODER_FRAME_MS = 20


@dataclass
class Manifest:
    model: dict
    source_sha256: str
    hop_ms: int
    lookahead_ms: int
    interface: dict
    backend: str  # "onnx" or "tensorrt"
    precision: str = "fp32"
    max_streams: int = 64
    opset: int = OPSET
    weight_norm: str = "folded"  # the small model has none; weight-normed convolutions are exported folded
    prototype_labels: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    format: str = ARTIFACT_FORMAT
    format_version: int = ARTIFACT_VERSION

    @property
    def config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model)

    @property
    def step_interface(self) -> StepInterface:
        return StepInterface.from_dict(self.interface)

    @property
    def hop_frames(self) -> int:
        return self.hop_ms // ENCODER_FRAME_MS

    @property
    def lookahead_frames(self) -> int:
        return self.lookahead_ms // ENCODER_FRAME_MS


def frames_from_ms(value: int, what: str, minimum: int) -> int:
    """Milliseconds -> 20 ms encoder frames; refuse values off the grid."""
    if value % ENCODER_FRAME_MS or value < minimum * ENCODER_FRAME_MS:
        raise UserError(f"{what} {value} ms must be a multiple of {ENCODER_FRAME_MS} ms, at least "
                        f"{minimum * ENCODER_FRAME_MS} ms")
    return value // ENCODER_FRAME_MS


def prototype_labels(model: EmoTalk) -> list[str]:
    """Labels whose emotion prototype exists (an override towards any other label is refused)."""
    present = model.emotion_prototypes.abs().sum(dim=1) > 0
    return [label for label, ok in zip(model.cfg.emotion_labels, present.tolist()) if ok]


class FlatStep(torch.nn.Module):
    """The step with positional tensors in and out, the form ONNX export takes."""

    def __init__(self, step: SmallStreamingStep):
        super().__init__()
        self.step = step
        self.n_inputs = len(step.input_specs())
        self.state_names = [s.name for s in step.state_specs()]
        self.output_names = [s.name for s in step.output_specs()]

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        states = dict(zip(self.state_names, tensors[self.n_inputs:]))
        outputs, new = self.step(*tensors[: self.n_inputs], states)
        return tuple(outputs[n] for n in self.output_names) + tuple(new[n] for n in self.state_names)


def export_onnx(step: SmallStreamingStep, path: Path, max_streams: int) -> None:
    """Write the step as ONNX: static shapes but for the batch axis (1..max_streams), states as
    explicit inputs (`state_X`) and outputs (`next_X`)."""
    interface = step_interface(step)
    example = [torch.zeros((2, *s.shape), dtype=getattr(torch, s.dtype)) for s in interface.inputs + interface.states]
    batch = torch.export.Dim("batch", min=1, max=max(2, max_streams))
    names_in = [s.name for s in interface.inputs] + [state_input(s.name) for s in interface.states]
    names_out = [s.name for s in interface.outputs] + [state_output(s.name) for s in interface.states]
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx.experimental"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")
        torch.onnx.export(FlatStep(step.eval()), tuple(example), str(path), input_names=names_in,
                          output_names=names_out, dynamic_shapes=(tuple({0: batch} for _ in example),),
                          opset_version=OPSET, dynamo=True, optimize=True, external_data=False, verbose=False)


def step_interface(step: SmallStreamingStep | WindowStreamingStep) -> StepInterface:
    return StepInterface(tuple(step.input_specs()), tuple(step.output_specs()), tuple(step.state_specs()))


def expected_interface(cfg: ModelConfig, hop_frames: int, lookahead: int) -> StepInterface:
    """The tensors this engine version's step has for a config (built with untrained weights)."""
    return step_interface(SmallStreamingStep(EmoTalk(cfg), hop_frames, lookahead))


def write_manifest(folder: Path, manifest: Manifest) -> None:
    manifest.files = {name: file_sha256(folder / name) for name in (ONNX_FILE, PLAN_FILE) if (folder / name).exists()}
    tmp = folder / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    os.replace(tmp, folder / MANIFEST_FILE)


def is_artifact(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST_FILE).is_file()


def read_manifest(folder: Path) -> Manifest:
    """Load and check an artifact's manifest against its files and this engine version."""
    path = Path(folder) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read engine manifest {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != ARTIFACT_FORMAT:
        raise UserError(f"{path} is not an emotalk-stream engine manifest: export one with emotalk-export")
    if data.get("format_version") != ARTIFACT_VERSION:
        raise UserError(f"engine artifact {folder} has format version {data.get('format_version')}, this "
                        f"emotalk-stream reads {ARTIFACT_VERSION}: re-export it with emotalk-export")
    try:
        manifest = Manifest(**data)
        cfg = manifest.config
    except (TypeError, KeyError) as exc:
        raise UserError(f"engine manifest {path} is malformed ({exc}): re-export it with emotalk-export") from exc
    for name, digest in manifest.files.items():
        file = Path(folder) / name
        if not file.is_file():
            raise UserError(f"engine artifact {folder} lacks {name}: re-export it with emotalk-export")
        if file_sha256(file) != digest:
            raise UserError(f"{file} does not match its manifest (changed or from another export): "
                            f"re-export the engine with emotalk-export")
    if manifest.step_interface != expected_interface(cfg, manifest.hop_frames, manifest.lookahead_frames):
        raise UserError(f"engine artifact {folder} has state tensors this engine version does not use "
                        f"(exported by another version): re-export it with emotalk-export")
    return manifest


def export_artifact(model: EmoTalk, source_sha256: str, out: Path, backend: str, hop_ms: int,
                    lookahead_ms: int, fp16: bool = False, max_streams: int = 64) -> Manifest:
    """Build the engine artifact in `out` (ONNX always; a TensorRT plan for backend "tensorrt")."""
    hop, lookahead = frames_from_ms(hop_ms, "--hop-ms", 1), frames_from_ms(lookahead_ms, "--lookahead-ms", 0)
    if fp16 and backend != "tensorrt":
        raise UserError("--fp16 applies to TensorRT plans; the ONNX artifact runs in fp32 on ONNX Runtime")
    if max_streams < 1:
        raise UserError(f"--max-streams {max_streams} must be at least 1")
    step = SmallStreamingStep(model.float().eval(), hop, lookahead)
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
