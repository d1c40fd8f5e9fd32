"""`emotalk-bench`: one JSON object with the figures docs/results.md quotes, and an exact streaming gap."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from emotalk_stream.tools.bench import main as bench_main
from emotalk_stream.training.corpus import generate

KEYS = {"step_ms_p50", "step_ms_p95", "step_ms_p99", "rtf", "max_realtime_streams", "peak_rss_mb",
        "streaming_gap", "lookahead_ms", "hop_ms", "backend"}


@pytest.mark.slow
def test_bench_json_and_streaming_gap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate(tmp_path / "corpus", 0.04, seed=5, workers=2, progress=False)
    assert bench_main(["--backend", "torch", "--seconds", "2", "--no-search", "--lookahead-ms", "80",
                       "--data", str(tmp_path / "corpus"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert KEYS <= set(result)
    assert result["backend"] == "torch" and (result["hop_ms"], result["lookahead_ms"]) == (20, 80)
    assert 0 < result["step_ms_p50"] <= result["step_ms_p95"] <= result["step_ms_p99"]
    assert result["rtf"] == pytest.approx(result["step_ms_mean"] / 20)
    assert result["peak_rss_mb"] > 50 and result["gap_clips"] >= 1
    # Streaming at 80 ms differs from offline at the model's own look-ahead (none) only by the look-ahead.
    assert abs(result["streaming_gap"]) < 0.05
    assert result["lip_mae_offline"] > 0 and result["offline_lookahead_ms"] == 0
    # An engine stepping frame k only once its look-ahead has arrived: delay >= look-ahead.
    assert 80 <= result["frame_delay_ms_mean"] <= result["frame_delay_ms_max"] <= 80 + 20 + 60


def test_bench_refuses_bad_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--streams", "0", "--no-gap"]) == 2
    assert bench_main(["--engine", str(tmp_path), "--no-gap"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "--streams" in errors[0] and "not an engine artifact" in errors[1]
