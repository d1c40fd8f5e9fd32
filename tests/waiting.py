"""Shared test helpers: wait for a condition instead of sleeping a guessed time; free ports; stop a
process."""
from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], what: str = "condition", timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port nothing listens on right now (UDP by default)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if `process` has not exited within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
