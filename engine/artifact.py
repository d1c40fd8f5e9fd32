"""The engine artifact: a folder with `manifest.json`, `model.onnx` and, for TensorRT, `model.plan`.

The manifest says everything a loader must agree with: the model config, hop and look-ahead, the
step's input/output/state tensors, backend, precision and the hashes of the source checkpoint and
of every file. `read_manifest` refuses an artifact whose files changed, that another engine
version wrote, or whose tensors are not the ones this version's step has.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..training.config import ModelConfig
from ..training.errors import UserError
from ..training.model_files import file_sha256
from .interface import ENCODER_FRAME_MS, StepInterface, small_interface

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
ARTIFACT_FORMAT = "emotalk-engine"
ARTIFACT_VERSION = 5  # 2: hops shifted by PREROLL samples, 240 samples of audio context; 3: no weight_norm field;
# 4: keys and values as rings (ONNX artifacts); 5: `auto` shows the detected emotion in proportion to its confidence
OPSET = 18


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
    except (TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"engine manifest {path} is malformed ({exc}): re-export it with emotalk-export") from exc
    for name, digest in manifest.files.items():
        file = Path(folder) / name
        if not file.is_file():
            raise UserError(f"engine artifact {folder} lacks {name}: re-export it with emotalk-export")
        if file_sha256(file) != digest:
            raise UserError(f"{file} does not match its manifest (changed or from another export): "
                            f"re-export the engine with emotalk-export")
    ring = manifest.backend != "tensorrt"  # TensorRT plans replace whole states (onnx_export)
    if manifest.step_interface != small_interface(cfg, manifest.hop_frames, manifest.lookahead_frames, ring):
        raise UserError(f"engine artifact {folder} has state tensors this engine version does not use "
                        f"(exported by another version): re-export it with emotalk-export")
    return manifest
