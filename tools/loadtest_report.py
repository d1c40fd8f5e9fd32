"""The load test's figures from its sessions' raw records, as one JSON object or a short table.

The schema is documented in docs/loadtest.md; `run_report` is the only place that builds it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from .loadtest_session import SessionResult


@dataclass(frozen=True)
class Costs:
    """CPU used over one run's wall time, in cores (CPU seconds per second)."""

    wall_s: float
    server_cores: float | None  # None where the server's /stats could not be read
    loadgen_cores: float


def _ms(values: list[float], points: tuple[int, ...]) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in points} | {"max": None}
    found = np.percentile(np.asarray(values) * 1000, points)
    return {f"p{p}": round(float(v), 1) for p, v in zip(points, found)} | {"max": round(1000 * max(values), 1)}


def run_report(target: str, protocol: str, frames_format: str | None, streams: int, seconds: float,
               results: list[SessionResult], costs: Costs, p95_limit_ms: float) -> dict[str, Any]:
    """Every figure of one run; `realtime` is the capacity criterion: every session held, no frame
    lost, p95 within the limit."""
    outcomes = Counter(r.outcome for r in results)
    reasons = Counter(r.reason for r in results if r.reason)
    expected = sum(r.expected_frames for r in results)
    received = sum(len(r.frames_shown()) for r in results)
    latencies = [x for r in results for x in r.latencies()]
    rates = [f for r in results if r.outcome == "completed" and (f := r.received_fps()) is not None]
    ready = next((r.ready for r in results if r.ready), {})
    latency = _ms(latencies, (50, 95, 99))
    realtime = (outcomes["completed"] == streams and expected > 0 and received == expected
                and latency["p95"] is not None and latency["p95"] <= p95_limit_ms)
    return {
        "target": target, "protocol": protocol, "frames_format": frames_format,
        "streams": streams, "seconds": seconds,
        "server": {key: ready.get(key) for key in ("fps", "hop_ms", "lookahead_ms")},
        "sessions": {"completed": outcomes["completed"], "refused": outcomes["refused"],
                     "failed": outcomes["failed"], "reasons": dict(reasons.most_common())},
        "frames": {"expected": expected, "received": received, "lost": expected - received},
        "latency_ms": latency,
        "fps": {"mean": round(float(np.mean(rates)), 2) if rates else None,
                "min": round(min(rates), 2) if rates else None},
        "pacing_lag_ms": _ms([x for r in results for x in r.lag], (95,)),
        "cpu": {"wall_s": round(costs.wall_s, 2),
                "server_cores": None if costs.server_cores is None else round(costs.server_cores, 3),
                "loadgen_cores": round(costs.loadgen_cores, 3)},
        "p95_limit_ms": p95_limit_ms,
        "realtime": realtime,
    }


def _num(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


def run_table(report: dict[str, Any]) -> str:
    """A few lines a person reads at a glance."""
    s, f, lat, cpu = report["sessions"], report["frames"], report["latency_ms"], report["cpu"]
    fmt = f" ({report['frames_format']} frames)" if report["frames_format"] else ""
    lines = [
        f"{report['streams']} streams x {report['seconds']:g} s of speech to {report['target']}{fmt}",
        f"  sessions     {s['completed']} completed, {s['refused']} refused, {s['failed']} failed",
        *(f"               {count} x {reason}" for reason, count in s["reasons"].items()),
        f"  frames       {f['expected']} expected, {f['received']} received, {f['lost']} lost",
        f"  latency      p50 {_num(lat['p50'])}  p95 {_num(lat['p95'])}  p99 {_num(lat['p99'])}  "
        f"max {_num(lat['max'])} ms (sound to frame)",
        f"  fps/session  mean {_num(report['fps']['mean'])}  min {_num(report['fps']['min'])}  "
        f"(server {_num(report['server']['fps'])})",
        f"  pacing lag   p95 {_num(report['pacing_lag_ms']['p95'])}  max {_num(report['pacing_lag_ms']['max'])} ms",
        f"  CPU cores    server {_num(cpu['server_cores'])}  load generator {_num(cpu['loadgen_cores'])}  "
        f"over {cpu['wall_s']:g} s",
        f"  real time    {'yes' if report['realtime'] else 'no'} (p95 <= {report['p95_limit_ms']:g} ms, "
        f"no frame lost, no session refused or failed)",
    ]
    return "\n".join(lines)


def probe_line(report: dict[str, Any]) -> str:
    """One find-max probe in one line (progress, and the table's rows)."""
    s, lat, cpu = report["sessions"], report["latency_ms"], report["cpu"]
    return (f"{report['streams']:>5} streams  p50 {_num(lat['p50']):>6}  p95 {_num(lat['p95']):>6}  "
            f"p99 {_num(lat['p99']):>6} ms  lost {report['frames']['lost']:>4}  refused {s['refused']:>3}  "
            f"failed {s['failed']:>3}  server {_num(cpu['server_cores']):>5}  loadgen {_num(cpu['loadgen_cores']):>5} "
            f"cores  {'real time' if report['realtime'] else 'NOT real time'}")


def find_max_table(report: dict[str, Any]) -> str:
    lines = [f"find-max on {report['target']}: probes of {report['seconds']:g} s, "
             f"real time = p95 <= {report['p95_limit_ms']:g} ms and no frame lost"]
    lines += ["  " + probe_line(probe) for probe in report["probes"]]
    best = report["max_streams"]
    lines.append(f"  most sessions held in real time: {best}" if best else
                 "  not even the first probe held in real time: start lower with --streams")
    return "\n".join(lines)
