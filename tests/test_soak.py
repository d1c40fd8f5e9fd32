"""A short soak in CI (`emotalk-soak --seconds 3600` is the full one, docs/reliability.md)."""
from __future__ import annotations

from emotalk_stream.tools.soak import soak


def test_a_minute_through_every_output_arrives_exactly_with_flat_memory_and_no_fd_leak() -> None:
    result = soak(seconds=60, fps=30, warmup=20, engine=None)
    assert result["vmc_ok"] and result["record_ok"], result
    for receiver in ("arkit", "livelink", "websocket"):
        assert result[receiver]["ok"], (receiver, result[receiver])
    assert result["websocket"]["final"]
    assert result["rss_growth"] < 0.05, result
    # one more at most: a churned WebSocket connection the server is still closing
    assert result["fds_peak_after_warmup"] <= result["fds_after_warmup"] + 1, result
    assert result["ws_clients_churned"] >= 1, result
