"""`emotalk-serve --workers N`: N processes on one port, each a hub with its own engine.

One Python process uses at most about 1.3 of this machine's 2 cores: its event loop (sockets,
frames) and the Python of its steps take turns on one interpreter lock (docs/loadtest.md). With
`--workers N` the parent reserves the ports and forks N workers; each runs the whole server (hub,
engine, WebSocket, gRPC) and listens on the ports with SO_REUSEPORT, so the kernel spreads new
connections over the workers (`reserve_port`). It spreads connections, not calls: a gRPC client
that sends all its streams over one channel reaches one worker.

Shared memory holds what must be one number for the whole server: the sessions each worker holds
(so `--max-streams` caps them together) and each worker's counters (so /stats on any worker
answers for all). A worker that dies is replaced, with its seats freed; its own sessions end with
their connections. Ctrl-C reaches every worker (one process group); SIGTERM to the parent is passed
on. Each worker then finishes its sessions as a single server does.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from ..training.errors import UserError

log = logging.getLogger("emotalk_stream.serve.workers")

COUNTERS = ("sessions", "steps", "frames", "cpu_seconds", "uptime_s", "refused", "dropped")
ROW = (*COUNTERS, "pid")  # what each worker publishes
BACKLOG = 512  # connections waiting to be accepted, per listening socket
SPREAD_BY_KERNEL = sys.platform == "linux"  # SO_REUSEPORT balances connections only on Linux
STOP_GRACE_S = 15.0  # after a stop signal, how long workers get to finish before they are killed


class WorkerBoard:
    """Counters in shared memory, written by each worker for itself and read by all."""

    def __init__(self, workers: int, context: multiprocessing.context.BaseContext):
        self.workers = workers
        self.worker = 0  # which row is this process's own: set in each worker after the fork
        self._seats = context.Array("i", workers)  # sessions each worker holds; its lock guards the sum
        self._rows = context.Array("d", workers * len(ROW), lock=False)

    def take_seat(self, limit: int) -> int:
        """The sessions held by all workers before this one; below `limit` this worker takes a seat."""
        with self._seats.get_lock():
            held = sum(self._seats)
            if held < limit:
                self._seats[self.worker] += 1
            return held

    def free_seat(self) -> None:
        with self._seats.get_lock():
            self._seats[self.worker] -= 1

    def clear(self, worker: int) -> None:
        """A worker is gone: its seats and counters go with it (its sessions ended with it)."""
        with self._seats.get_lock():
            self._seats[worker] = 0
        self._rows[worker * len(ROW):(worker + 1) * len(ROW)] = [0.0] * len(ROW)

    def publish(self, stats: dict) -> None:
        start = self.worker * len(ROW)
        self._rows[start:start + len(ROW)] = [float(stats[key]) for key in COUNTERS] + [float(os.getpid())]

    def summary(self, own: dict) -> dict:
        """`own` (this worker's stats, fresh) with every counter added up over the workers (uptime:
        the longest), and each worker's own (with its process id) under "workers". The others'
        counters are as they last published them (`hub.PUBLISH_S`); the sessions are the seats held now."""
        self.publish(own)
        width = len(ROW)
        rows = [dict(zip(ROW, self._rows[w * width:(w + 1) * width])) for w in range(self.workers)]
        rows = [{key: round(value, 3) if key in ("cpu_seconds", "uptime_s") else int(value) for key, value in row.items()}
                for row in rows]
        with self._seats.get_lock():  # the sessions as of now: the other counters are up to `PUBLISH_S` old
            for row, seats in zip(rows, self._seats):
                row["sessions"] = seats
        total = {key: sum(row[key] for row in rows) for key in COUNTERS}
        total["cpu_seconds"] = round(total["cpu_seconds"], 3)
        total["uptime_s"] = max(row["uptime_s"] for row in rows)
        return {**own, **total, "workers": rows}


def reserve_port(host: str, port: int) -> socket.socket:
    """The WebSocket port, bound here for the workers (`UserError` when it cannot be had).

    On Linux it is bound with SO_REUSEPORT and not listened on: each worker listens on a socket of
    its own on the port (`worker_socket`) and the kernel spreads new connections over them by their
    addresses, whatever each worker's load. One socket shared by all workers (elsewhere) hands a
    connection to the worker that polls first, which is the busier one: 48 sessions split 38 to 10."""
    from .websocket_server import bind_error
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        if SPREAD_BY_KERNEL:
            sock = _reuse_port(family, (host, port))
        else:
            sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise UserError(bind_error(exc, "--port", host, port)) from None
    sock.setblocking(False)
    return sock


def worker_socket(reserved: socket.socket) -> socket.socket:
    """The listening socket a worker accepts on: its own on the reserved port, or the shared one."""
    if not SPREAD_BY_KERNEL:
        return reserved
    sock = _reuse_port(reserved.family, reserved.getsockname())
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def _reuse_port(family: socket.AddressFamily, address: tuple) -> socket.socket:
    """A TCP socket bound to `address` with SO_REUSEPORT: the port's other such sockets share it."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def free_grpc_port(host: str, port: int) -> int:
    """Check that no other program listens on the gRPC port (the workers share it with SO_REUSEPORT,
    which would not notice); 0 becomes a free port."""
    from .websocket_server import bind_error
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family) as probe:
            return probe.getsockname()[1]
    except OSError as exc:
        raise UserError(bind_error(exc, "--grpc-port", host, port)) from None


Worker = Callable[[socket.socket, WorkerBoard, Connection], int]


def serve_in_workers(args: argparse.Namespace, worker: Worker) -> int:
    """Fork `args.workers` processes, each running `worker(listener, board, ready)`, which sends on
    `ready` once it serves. The first starts alone, so that an error (the model, a port) is reported
    once; a worker that dies once serving is replaced. Returns the exit code."""
    if not hasattr(os, "fork"):
        raise UserError("--workers needs fork(), which this system lacks (Windows): run one emotalk-serve "
                        "per port instead, or use WSL2")
    context = multiprocessing.get_context("fork")
    reserved = reserve_port(args.host, args.port)
    board = WorkerBoard(args.workers, context)
    processes: list[BaseProcess] = []
    stopping = False

    def start(index: int) -> int | None:
        """Start worker `index`; None once it serves, else its exit code."""
        board.clear(index)
        ours, theirs = context.Pipe(duplex=False)
        process = context.Process(target=_worker_main, args=(worker, index, args, reserved, board, theirs),
                                  name=f"emotalk-serve worker {index}")
        process.start()
        theirs.close()
        processes[index:index + 1] = [process]
        return _await_ready(process, ours)

    def on_stop(_signum: int, _frame: object) -> None:
        """Pass a stop on as SIGTERM: a worker that got Ctrl-C too just stops (a second SIGINT
        would make it exit at once)."""
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_stop)
    try:
        for index in range(args.workers):
            code = start(index)
            if code is not None:  # it failed before serving and said why (or was stopped): stop the others
                return 0 if stopping else code or 2
        log.info("%d worker processes share the port, each with its own engine", args.workers)
        while not stopping:
            wait([process.sentinel for process in processes], timeout=0.5)
            for index, process in enumerate(processes):
                if process.exitcode is not None and not stopping:
                    log.warning("worker %d ended (exit %s): its sessions are gone; starting a new one",
                                index, process.exitcode)
                    code = start(index)
                    if code is not None:
                        return 0 if stopping else code or 2
    finally:
        _stop_all(processes)
        reserved.close()
    return max((process.exitcode or 0 for process in processes), default=0)


def _await_ready(process: BaseProcess, ready: Connection) -> int | None:
    """None once the worker serves; its exit code if it ended first (its end of the pipe then
    closes unsent, which `poll` reports as readable too)."""
    wait([process.sentinel, ready])
    with ready:
        try:
            if ready.poll() and ready.recv():
                return None
        except EOFError:
            pass
    process.join()
    return process.exitcode


def _stop_all(processes: list[BaseProcess]) -> None:
    """SIGTERM to the workers still running (they finish their sessions); killed after `STOP_GRACE_S`."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(STOP_GRACE_S)
        if process.is_alive():
            process.kill()
            process.join()


def _worker_main(worker: Worker, index: int, args: argparse.Namespace, reserved: socket.socket, board: WorkerBoard,
                 ready: Connection) -> None:
    from ..training.errors import run_reporting
    from .cli import PROG
    board.worker = index
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)  # until the worker's event loop installs its own
    sys.exit(run_reporting(PROG, lambda _args: worker(worker_socket(reserved), board, ready), args))
