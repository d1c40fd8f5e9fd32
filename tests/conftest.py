"""Fixtures shared by the tests: one engine of the bundled model for the session, a time limit, a
headless Chromium tab, the package's logger put back after every test, and no user config file."""
from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from chromium import CHROMIUM, Tab, open_tab
from emotalk_stream.engine import Controls, Engine
from emotalk_stream.streamer.controls import ControlBoard
from emotalk_stream.streamer.face import FaceSettings

TEST_TIMEOUT_S = 60


@pytest.fixture(scope="session", autouse=True)
def no_user_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """emotalk-stream reads $XDG_CONFIG_HOME/emotalk-stream/config.toml without --config: a
    developer's own file must not change what the commands the tests start do."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config-home")))
        yield


@pytest.fixture(scope="session")
def engine() -> Engine:
    """The bundled engine on ONNX Runtime, as `--model default` runs it."""
    return Engine.load("default")


@pytest.fixture(autouse=True)
def package_logging() -> Iterator[None]:
    """A command's main() installs its console on the package's logger, writing to that test's
    captured output; give the next test the logger it had."""
    logger = logging.getLogger("emotalk_stream")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture
def board(engine: Engine) -> ControlBoard:
    return ControlBoard(engine, Controls(), FaceSettings())


@pytest.fixture
def time_limit() -> Iterator[None]:
    """Fail a hanging test instead of hanging the run (pytest-timeout is not installed)."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"test ran longer than {TEST_TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_TIMEOUT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def tab(tmp_path: Path) -> Iterator[Tab]:
    """A headless Chromium tab; the test is skipped, with the reason, where Chromium is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"the viewer tests drive headless Chromium, and {CHROMIUM} is not installed")
    with open_tab(tmp_path) as opened:
        yield opened
