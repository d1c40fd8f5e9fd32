"""`emotalk-loadtest`: many real-time speakers against one emotalk-serve, and what they get back.

N clients in one asyncio process each send real speech (the bundled clip looped, or --wav files,
each client at its own place in it) in 20 ms blocks paced on the monotonic clock, over the
WebSocket protocol (--url) or NVIDIA's Audio2Face-3D gRPC API (--grpc). The command reports the
sound-to-frame latency of every frame (tools/loadtest_session.py defines it), frames expected,
received and lost, the frame rate each session got, refusals, and the CPU the server and the load
generator itself used, so a run on a machine they share says what each costs. `--find-max` searches
for the most sessions held in real time. Schema and method: docs/loadtest.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from ..streamer.cli import TOKEN_ENV
from ..training.errors import UserError, add_debug_flag, run_cli
from ..training.model_files import SAMPLE_SPEECH
from .loadtest_report import Costs, find_max_table, probe_line, run_report, run_table
from .loadtest_session import Plan, SessionResult, Speech, WebSocketClient, plans

PROG = "emotalk-loadtest"
PROGRESS_S = 10.0  # a progress line on stderr this often, on runs longer than twice that
STATS_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 15.0  # between find-max probes: for the last probe's sessions to leave the server
MAX_PROBE_STREAMS = 4096  # find-max stops doubling here
SPARE_FILES = 64  # descriptors beyond one per session: the venv's imports, /stats, stdio


class Client(Protocol):
    async def run(self, plan: Plan, result: SessionResult) -> None: ...


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def stats_url(url: str) -> str:
    """The server's /stats beside its WebSocket endpoint."""
    parts = urlsplit(url)
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}/stats"


def read_stats(url: str, token: str | None) -> dict[str, Any] | None:
    """The server's /stats, or None where it has none; a wrong token or no server is the user's to fix."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=STATS_TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        said = exc.read().decode("utf-8", "replace").strip() or exc.reason
        if exc.code in (401, 403):
            raise UserError(f"the server refused the token ({exc.code}: {said}): pass the server's token "
                            f"with --token") from exc
        return None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot connect to the server at {urlsplit(url).netloc} ({reason}): start emotalk-serve "
                        f"there or fix the address") from exc
    except ValueError:
        return None


def _cpu_seconds(stats: dict[str, Any] | None) -> float | None:
    value = (stats or {}).get("cpu_seconds")
    return float(value) if isinstance(value, (int, float)) else None


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


async def _progress(results: list[SessionResult], seconds: float) -> None:
    start = time.monotonic()
    while True:
        await asyncio.sleep(PROGRESS_S)
        running = sum(1 for r in results if r.ready and r.outcome != "completed")
        frames = sum(len(r.frames) for r in results)
        _say(f"{time.monotonic() - start:.0f}/{seconds:g} s, {running} sessions streaming, {frames} frames received")


async def _sessions(client: Client, session_plans: list[Plan], seconds: float) -> list[SessionResult]:
    results = [SessionResult(plan.index) for plan in session_plans]
    progress = asyncio.create_task(_progress(results, seconds)) if seconds >= 2 * PROGRESS_S else None
    try:
        await asyncio.gather(*(client.run(plan, result) for plan, result in zip(session_plans, results)))
    finally:
        if progress is not None:
            progress.cancel()
    return results


class LoadTest:
    """One target, one speech, one client kind; `probe(streams)` is one run of the load."""

    def __init__(self, args: argparse.Namespace, speech: Speech):
        self.args = args
        self.speech = speech
        self.stats = args.stats or (stats_url(args.url) if args.url else None)
        self.target = args.url or f"grpc://{args.grpc}"
        self.client = self._client()

    def _client(self) -> Client:
        if self.args.grpc:
            try:
                from .loadtest_grpc import GrpcClient
            except ModuleNotFoundError as exc:
                from ..serve.cli import GRPC_HINT
                raise UserError(f"--grpc needs gRPC, which is not installed ({exc.name}): {GRPC_HINT}") from exc
            return GrpcClient(self.args.grpc, self.args.token, self.speech)
        return WebSocketClient(self.args.url, self.args.token, self.args.frames, self.speech)

    def server_stats(self) -> dict[str, Any] | None:
        return read_stats(self.stats, self.args.token) if self.stats else None

    def probe(self, streams: int) -> dict[str, Any]:
        session_plans = plans(streams, self.args.seconds, self.speech.samples)
        before, own_before, start = _cpu_seconds(self.server_stats()), _own_cpu(), time.monotonic()
        results = asyncio.run(_sessions(self.client, session_plans, self.args.seconds))
        wall = time.monotonic() - start
        after, own = _cpu_seconds(self.server_stats()), _own_cpu() - own_before
        if not any(r.ready or r.outcome == "refused" for r in results):
            fatal = next((r.fatal for r in results if r.fatal), None)
            raise UserError(fatal or f"no session got in: {results[0].reason}")
        server = None if before is None or after is None else (after - before) / wall
        return run_report(self.target, "grpc" if self.args.grpc else "websocket",
                          None if self.args.grpc else self.args.frames, streams, self.args.seconds, results,
                          Costs(wall, server, own / wall), self.args.p95_ms)

    def drain(self) -> None:
        """Wait until the server has let the last probe's sessions go, so probes do not overlap."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            stats = self.server_stats()
            if stats is None:
                time.sleep(1.0)
                return
            if not stats.get("sessions"):
                return
            time.sleep(0.2)


def find_max(test: LoadTest, start: int, ceiling: int) -> dict[str, Any]:
    """Double the streams from `start` (up to `ceiling`) until a probe is not real time, then
    bisect between the last that was and the first that was not."""
    probes: list[dict[str, Any]] = []
    best, worst = 0, None

    def probe(streams: int) -> bool:
        if probes:
            test.drain()
        report = test.probe(streams)
        probes.append(report)
        _say("probe " + probe_line(report))
        return report["realtime"]

    streams = start
    while worst is None:
        if probe(streams):
            best = streams
            if streams >= ceiling:
                break
            streams = min(2 * streams, ceiling)
        else:
            worst = streams
    while worst is not None and worst - best > 1:
        middle = (best + worst) // 2
        if probe(middle):
            best = middle
        else:
            worst = middle
    first = probes[0]
    return {"target": first["target"], "protocol": first["protocol"], "frames_format": first["frames_format"],
            "seconds": test.args.seconds, "p95_limit_ms": test.args.p95_ms, "probes": probes, "max_streams": best}


def _check(args: argparse.Namespace) -> None:
    if args.url:
        parts = urlsplit(args.url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise UserError(f"--url {args.url} is not a WebSocket URL: give ws://HOST:PORT/v1/stream "
                            f"(wss:// with TLS)")
    else:
        host, _, port = args.grpc.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"--grpc {args.grpc}: give HOST:PORT, e.g. 127.0.0.1:52000")
    if args.streams < 1:
        raise UserError("--streams must be at least 1")
    if args.seconds <= 0:
        raise UserError("--seconds must be more than 0")
    if args.p95_ms <= 0:
        raise UserError("--p95-ms must be more than 0")


def session_limit(wanted: int) -> int:
    """The most sessions this process can open (one socket each), at most `wanted`: the soft
    descriptor limit raised as far as needed and allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return wanted if soft == resource.RLIM_INFINITY else min(wanted, soft - SPARE_FILES)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Real-time speech from many clients against emotalk-serve: "
                                "latency, lost frames, frame rate and CPU (docs/loadtest.md).")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="the WebSocket endpoint, ws://HOST:PORT/v1/stream")
    target.add_argument("--grpc", metavar="HOST:PORT", help="the Audio2Face-3D gRPC endpoint instead")
    p.add_argument("--streams", type=int, default=8, metavar="N", help="concurrent sessions (default 8; with --find-max "
                   "the first probe)")
    p.add_argument("--seconds", type=float, default=10.0, metavar="S", help="speech per session, in seconds (default 10)")
    p.add_argument("--token", default=os.environ.get(TOKEN_ENV), metavar="TOKEN",
                   help=f"the server's token (default: ${TOKEN_ENV})")
    p.add_argument("--wav", type=Path, action="append", metavar="FILE", help="speech to send (repeatable; default: the bundled "
                   "clip), looped, each session from its own place in it")
    p.add_argument("--frames", choices=("json", "binary"), default="json", help="WebSocket frame form (default json)")
    p.add_argument("--stats", metavar="URL", help="the server's /stats for its CPU use (default: beside --url; "
                   "with --grpc, none unless given)")
    p.add_argument("--find-max", action="store_true", help="search for the most sessions held in real time")
    p.add_argument("--p95-ms", type=float, default=150.0, metavar="MS", help="real time: p95 latency at most this (default 150)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_debug_flag(p)
    return p


def _run(args: argparse.Namespace) -> int:
    _check(args)
    speech = Speech.load(args.wav or [SAMPLE_SPEECH])
    limit = session_limit(MAX_PROBE_STREAMS if args.find_max else args.streams)
    if limit < args.streams:
        raise UserError(f"{args.streams} sessions need {args.streams + SPARE_FILES} open files and this shell "
                        f"allows {limit + SPARE_FILES}: raise it (ulimit -Hn) or run fewer streams")
    test = LoadTest(args, speech)
    if args.find_max:
        report = find_max(test, args.streams, limit)
        text = find_max_table(report)
    else:
        report = test.probe(args.streams)
        text = run_table(report)
    report["speech"] = speech.names
    print(json.dumps(report, indent=2) if args.json else text)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, _run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
