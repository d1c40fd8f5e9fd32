"""Where models live on disk, free of PyTorch: checkpoint folders, the bundled default model, its
engine artifact and voice clip, and the hashes that tie an artifact to the checkpoint it came from."""
from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import UserError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DEFAULT_MODEL = Path(__file__).parent / "assets" / "default"
DEFAULT_ENGINE = DEFAULT_MODEL / "engine"  # the bundled model exported for ONNX Runtime (emotalk-export)
SAMPLE_SPEECH = Path(__file__).parent / "assets" / "sample.wav"  # the bundled voice clip


def resolve_checkpoint(path_or_default: str | Path) -> Path:
    """"default" -> the bundled model; a folder or its model.safetensors -> the folder."""
    if str(path_or_default) == "default":
        if not (DEFAULT_MODEL / WEIGHTS_FILE).is_file():
            raise UserError(f"the bundled default model is missing ({DEFAULT_MODEL}): this install has no "
                            f"trained model; reinstall emotalk-stream or pass a checkpoint folder")
        return DEFAULT_MODEL
    path = Path(path_or_default)
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        raise UserError(f"{path} is a PyTorch pickle, which is never loaded directly: convert it with "
                        f"`emotalk-import --official {path} --out DIR` and load DIR")
    if path.is_file() and path.name.endswith(".safetensors"):
        path = path.parent
    if not path.is_dir():
        raise UserError(f"checkpoint {path} not found: give a folder with {WEIGHTS_FILE} and {CONFIG_FILE}")
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise UserError(f"checkpoint {path} has no {name}: expected {WEIGHTS_FILE} + {CONFIG_FILE}")
    return path


def model_hash(folder: str | Path) -> str:
    """sha256 of the weights file, hex: names exactly which model an artifact came from."""
    path = Path(folder)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    return file_sha256(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
