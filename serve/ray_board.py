"""The one actor every replica of the Ray Serve app talks to (a Serve deployment-scoped actor).

A replica sees only its own sessions, and a request reaches only one replica. So each replica
reports its counters here every `REPORT_S`: /stats on any replica then answers for the whole app,
and the command's drain at Ctrl-C, set here once, reaches every replica with its next report.
"""
from __future__ import annotations

import time

import ray

REPORT_S = 0.5  # how often a replica reports (and hears of a drain)
STALE_S = 3.0  # a replica not heard from this long is gone (killed, or its node lost)


@ray.remote(num_cpus=0)
class Board:
    """Each replica's last counters, and whether every replica is to drain."""

    def __init__(self) -> None:
        self._reports: dict[str, tuple[float, dict]] = {}
        self._draining = False

    def report(self, stats: dict) -> bool:
        """Keep a replica's counters (`stats["replica"]` names it); whether it is to drain."""
        self._reports[stats["replica"]] = (time.monotonic(), stats)
        return self._draining

    def drain(self) -> None:
        self._draining = True

    def summary(self) -> dict:
        """The counters of the replicas alive now, added up (uptime: the longest), and each one's own."""
        now = time.monotonic()
        self._reports = {key: (seen, stats) for key, (seen, stats) in self._reports.items() if now - seen <= STALE_S}
        replicas = sorted((stats for _, stats in self._reports.values()), key=lambda stats: stats["replica"])
        total: dict = {}
        for stats in replicas:
            for key, value in stats.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    total[key] = max(total.get(key, 0), value) if key == "uptime_s" else total.get(key, 0) + value
        if "cpu_seconds" in total:
            total["cpu_seconds"] = round(total["cpu_seconds"], 3)
        return {**total, "replicas": replicas}
