"""`emotalk-bench --startup`: the startup/footprint figures come back as sane JSON, and its helpers.

Speed targets are not asserted here: they are measured by the benchmark command, not by timed tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emotalk_stream.tools import startup
from emotalk_stream.tools.startup import TARGETS, disk_usage_mb, median, meets, parse_vmhwm_mb, summary

STATUS = """Name:\tpython
VmPeak:\t  612340 kB
VmSize:\t  600000 kB
VmHWM:\t  153600 kB
VmRSS:\t  140000 kB
"""


def test_median_is_robust_to_one_slow_run() -> None:
    assert median([0.2, 9.0, 0.3]) == 0.3
    assert median([1.0, 2.0]) == 1.5
    assert median(x for x in (4.0,)) == 4.0
    with pytest.raises(ValueError):
        median([])


def test_vmhwm_parser_reads_the_peak_not_the_current_rss() -> None:
    assert parse_vmhwm_mb(STATUS) == 150.0
    assert parse_vmhwm_mb("Name:\tkthreadd\nVmRSS:\t 0 kB\n") is None  # kernel threads have no VmHWM
    assert parse_vmhwm_mb("VmHWM:\t garbage kB\n") is None


def test_vmhwm_of_this_process_is_plausible() -> None:
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("no /proc here")
    assert 10 < parse_vmhwm_mb(status.read_text()) < 100_000


def test_disk_usage_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "big").write_bytes(b"x" * 2**20)
    empty = disk_usage_mb(tmp_path / "a") - 1.0
    os.link(tmp_path / "a" / "big", tmp_path / "a" / "same")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a")  # not followed
    assert 0 <= empty < 0.1
    assert disk_usage_mb(tmp_path / "a") == pytest.approx(1.0 + empty, abs=0.02)


def test_targets_and_summary() -> None:
    assert meets("help_s", 0.5) and not meets("rss_mb", 201) and meets("venv_mb", None) is None
    assert meets("torch_imported", False) and not meets("torch_imported", True)
    result = {"venv_mb": None, "venv_has_torch": None, "venv_install_s": None, "help_s": 0.21,
              "first_packet_s": 1.4, "rss_mb": 120.0, "torch_imported": False}
    result["met"] = {name: meets(name, result[name]) for name in TARGETS}
    text = summary(result)
    assert "first_packet_s" in text and "MISSED" in text and "not measured" in text


def test_venv_size_needs_a_source_checkout(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(startup, "source_root", lambda: None)  # as when installed from a wheel
    assert startup.main(["--venv-size", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "source checkout" in captured.err


def test_the_bench_hands_startup_to_this_module(monkeypatch: pytest.MonkeyPatch) -> None:
    from emotalk_stream.tools.bench import main as bench_main
    calls = []
    monkeypatch.setattr(startup, "run_startup", lambda as_json, venv_size: calls.append((as_json, venv_size)))
    assert bench_main(["--startup", "--json", "--venv-size"]) == 0 and calls == [(True, True)]


def test_startup_json() -> None:
    # The module itself, as `python -m` runs it where only the runtime is installed (the bench's own
    # imports would add PyTorch's start-up to this test, not to the figures).
    done = subprocess.run([sys.executable, "-m", "emotalk_stream.tools.startup", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "emotalk-bench:" not in done.stderr  # no progress lines where stderr is not a terminal
    result = json.loads(done.stdout)
    assert {"venv_mb", "venv_has_torch", "help_s", "first_packet_s", "rss_mb", "torch_imported",
            "targets", "python", "platform"} <= set(result)
    assert result["venv_mb"] is None and result["venv_has_torch"] is None  # only with --venv-size
    assert result["help_s"] > 0 and result["first_packet_s"] > 0 and result["rss_mb"] > 10
    assert result["torch_imported"] is False
    assert result["targets"] == {"venv_mb": 300, "help_s": 0.5, "first_packet_s": 1.0, "rss_mb": 200,
                                 "torch_imported": False}
