"""Fixtures shared by the streamer's tests: one engine of the bundled model for the whole session."""
from __future__ import annotations

import pytest

from emotalk_stream.engine import Controls, Engine
from emotalk_stream.streamer.controls import ControlBoard
from emotalk_stream.streamer.face import FaceSettings


@pytest.fixture(scope="session")
def engine() -> Engine:
    """The bundled model on the torch backend (about a second to load)."""
    return Engine.load("default")


@pytest.fixture
def board(engine: Engine) -> ControlBoard:
    return ControlBoard(engine, Controls(), FaceSettings())
