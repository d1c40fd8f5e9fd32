"""Streaming inference for emotalk-stream: `Engine`, `Stream`, `Controls`, `Frame` (see engine.py)."""
from .engine import Controls, Engine, Frame, Stream

__all__ = ["Controls", "Engine", "Frame", "Stream"]
