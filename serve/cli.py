"""`emotalk-serve`: many speakers on one engine, over WebSocket and NVIDIA's Audio2Face-3D gRPC API.

    emotalk-serve                                    ws://127.0.0.1:8765/v1/stream, gRPC on 52000
    emotalk-serve --host 0.0.0.0 --token "$(openssl rand -hex 16)" --tls-cert cert.pem --tls-key key.pem

Everything the user can get wrong (token, certificate, gRPC's install) is checked before the model
loads; then one hub serves both protocols until Ctrl-C, SIGTERM or (Windows) Ctrl-Break, when every
session gets its remaining frames and the final one before the connections close.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..streamer.address import LOCAL_HOST, all_interfaces
from ..streamer.cli import STOP_SIGNALS, TOKEN_ENV, add_model_options
from ..training.errors import UserError, add_debug_flag, run_cli

if TYPE_CHECKING:
    from ..engine import Engine
    from .websocket_server import StreamServer
    from .workers import WorkerBoard

    GrpcStarter = Callable[..., Awaitable[Any]]  # serve/a2f_grpc.py's start_grpc

PROG = "emotalk-serve"
DEFAULT_GRPC_PORT = 52000  # Audio2Face-3D NIM's port
GRPC_HINT = "pip install 'emotalk-stream[serve]'"

log = logging.getLogger("emotalk_stream.serve.cli")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Serve many speakers on one batched engine: audio in, "
                                "52 ARKit blendshapes with emotion out, over WebSocket and the Audio2Face-3D gRPC API.")
    net = p.add_argument_group("network")
    net.add_argument("--host", default=LOCAL_HOST, help="address to listen on (default 127.0.0.1, this machine "
                     "only; 0.0.0.0 is every network)")
    net.add_argument("--port", type=int, default=8765, help="WebSocket and HTTP port (default 8765; 0: any free port)")
    net.add_argument("--grpc-port", type=int, metavar="PORT",
                     help=f"Audio2Face-3D gRPC port (default {DEFAULT_GRPC_PORT}; needs the serve extra)")
    net.add_argument("--no-grpc", action="store_true", help="WebSocket only")
    net.add_argument("--token", metavar="TOKEN", help="clients must send TOKEN (WebSocket: ?token=TOKEN or "
                     f"Authorization: Bearer TOKEN; gRPC: the same header). Default: ${TOKEN_ENV}")
    net.add_argument("--tls-cert", metavar="FILE", help="serve wss:// and https:// with this PEM certificate")
    net.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key")

    add_model_options(p)

    limits = p.add_argument_group("limits")
    limits.add_argument("--max-streams", type=int, default=64, metavar="N",
                        help="sessions at once; more are refused (WebSocket close 1013) (default 64)")
    limits.add_argument("--workers", type=int, default=1, metavar="N",
                        help="processes sharing the port, each with its own engine: one uses at most about 1.3 "
                             "cores, so give one per core to serve more sessions (default 1; docs/serving.md)")
    limits.add_argument("--idle-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="close a client that sends nothing this long (default 10)")
    ray = p.add_argument_group("Ray Serve: replicas on a Ray cluster, each with its own engine (docs/serving-ray.md)")
    ray.add_argument("--ray", action="store_true", help="serve on Ray Serve (WebSocket only); without --ray-address "
                     "on a Ray instance started on this machine")
    ray.add_argument("--ray-address", metavar="ADDRESS", help="an existing Ray cluster: auto, HOST:PORT or ray://HOST:PORT")
    ray.add_argument("--replicas", type=int, metavar="N", help="a fixed number of replicas (default 1)")
    ray.add_argument("--autoscale", metavar="MIN:MAX", help="replicas scaled on sessions per replica instead")
    ray.add_argument("--target-sessions", type=int, metavar="N", help="with --autoscale: the sessions per replica "
                     "the autoscaler aims at (default 3/4 of --max-streams)")
    ray.add_argument("--cpus-per-replica", type=float, metavar="N", help="CPUs Ray reserves for each replica (default 1)")
    ray.add_argument("--gpus-per-replica", type=float, metavar="N", help="GPUs for each replica (default 0); with a GPU "
                     "the engine runs on CUDA: a checkpoint on torch, or a TensorRT --engine")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, run, build_parser(), argv)


def run(args: argparse.Namespace) -> int:
    _install_logging(args.quiet)
    token = check_token(args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None)
    tls = tls_files(args.tls_cert, args.tls_key)
    context = ssl_context(tls) if tls else None
    if args.max_streams < 1:
        raise UserError(f"--max-streams {args.max_streams}: give 1 or more")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: give 1 or more")
    if not args.idle_timeout > 0:
        raise UserError(f"--idle-timeout {args.idle_timeout}: give a number of seconds above 0")
    for option, port in (("--port", args.port), ("--grpc-port", args.grpc_port)):
        if port is not None and not 0 <= port < 65536:
            raise UserError(f"{option} {port}: give a port from 1 to 65535 (0: any free port)")
    from .ray_launch import serve_on_ray, uses_ray  # Ray itself is imported only with --ray
    if uses_ray(args):
        if args.workers > 1:
            raise UserError("--workers is for the plain server; on Ray give --replicas")
        return serve_on_ray(args, token, tls)
    start_grpc = grpc_starter(args)
    from ..streamer.launch import load_engine  # the model, only once the arguments are good
    if args.workers == 1:
        asyncio.run(serve(args, load_engine(args), token, tls, context, start_grpc))
        return 0
    from .workers import free_grpc_port, serve_in_workers
    if start_grpc is not None:
        args.grpc_port = free_grpc_port(args.host, DEFAULT_GRPC_PORT if args.grpc_port is None else args.grpc_port)

    def worker(listener: socket.socket, board: "WorkerBoard", ready: Connection) -> int:
        engine = load_engine(args)
        engine.split_large_steps = False  # the other workers have the other cores
        asyncio.run(serve(args, engine, token, tls, context, start_grpc, listener=listener, board=board,
                          on_ready=lambda: ready.send(True)))
        return 0
    return serve_in_workers(args, worker)


def check_token(token: str | None) -> str | None:
    if token is not None and not (token and token.isascii() and token.isprintable() and " " not in token):
        raise UserError("--token must be printable ASCII without spaces, so that every client sends it "
                        "alike: e.g. the output of `openssl rand -hex 16`")
    return token


def tls_files(cert: str | None, key: str | None) -> tuple[Path, Path] | None:
    if (cert is None) != (key is None):
        raise UserError("--tls-cert and --tls-key go together: give the certificate and its private key "
                        "(docs/serving.md shows how to make them)")
    if cert is None:
        return None
    for option, name in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(name).is_file():
            raise UserError(f"{option} {name}: no such file")
    return Path(cert), Path(key)


def ssl_context(tls: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(*tls)
    except (ssl.SSLError, OSError) as exc:
        raise UserError(f"--tls-cert {tls[0]} / --tls-key {tls[1]}: not a PEM certificate and its key ({exc}); "
                        f"docs/serving.md shows how to make them") from None
    return context


def grpc_starter(args: argparse.Namespace) -> "GrpcStarter | None":
    """The gRPC front end's `start_grpc`, or None when it is off (asked, or not installed)."""
    if args.no_grpc:
        if args.grpc_port is not None:
            raise UserError("--grpc-port and --no-grpc contradict each other: give one of them")
        return None
    try:
        from .a2f_grpc import start_grpc
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith(("grpc", "google", __package__)):
            raise
        if args.grpc_port is not None:
            raise UserError(f"--grpc-port needs gRPC, which is not installed ({exc.name}): {GRPC_HINT}") from None
        log.info("gRPC off: %s", GRPC_HINT)
        return None
    return start_grpc


async def serve(args: argparse.Namespace, engine: "Engine", token: str | None, tls: tuple[Path, Path] | None,
                context: ssl.SSLContext | None, start_grpc: "GrpcStarter | None", *,
                listener: socket.socket | None = None, board: "WorkerBoard | None" = None,
                on_ready: Callable[[], None] | None = None) -> None:
    """Serve until Ctrl-C, SIGTERM or Ctrl-Break, then finish every session. A worker process
    (serve/workers.py) accepts on `listener` (its socket on the server's port), counts on the shared
    `board`, and calls `on_ready` once it serves; only the first one announces the addresses."""
    from .hub import SessionHub
    from .websocket_server import StreamServer
    hub = SessionHub(engine, max_streams=args.max_streams, board=board)
    server = StreamServer(hub, args.host, args.port, token=token, ssl_context=context, idle_timeout=args.idle_timeout,
                          sock=listener)
    grpc_server = None
    with _stop_on_signals(asyncio.get_running_loop()) as stop:
        await hub.start()
        try:
            await server.start()
            if start_grpc is not None:
                port = DEFAULT_GRPC_PORT if args.grpc_port is None else args.grpc_port
                grpc_server = await start_grpc(hub, args.host, port, token, tls, shared_port=board is not None)
            if board is None or board.worker == 0:
                _announce(server, args, token, grpc_server is not None)
            if on_ready is not None:
                on_ready()
            await stop.wait()
            log.info("stopping: finishing %d session(s)", hub.sessions)
        finally:
            server.stop_accepting()
            await hub.stop()
            if grpc_server is not None:
                await grpc_server.stop(1.0)
            await server.close()


def _announce(server: "StreamServer", args: argparse.Namespace, token: str | None, grpc_on: bool) -> None:
    query = "?token=TOKEN" if token else ""
    log.info("WebSocket sessions at %s%s (up to %d at once)", server.url, query, args.max_streams)
    log.info("page at %s, health at %shealth, stats at %sstats%s", server.page_url, server.page_url,
             server.page_url, query)
    if grpc_on:
        log.info("Audio2Face-3D gRPC at %s:%d%s", args.host, DEFAULT_GRPC_PORT if args.grpc_port is None else args.grpc_port,
                 " (TLS)" if server.url.startswith("wss") else "")
    if all_interfaces(args.host):
        if token:
            log.info("listening on every network interface: only clients with the token get in%s",
                     "" if server.url.startswith("wss") else "; without TLS the token crosses the network unencrypted")
        else:
            log.warning("listening on every network interface without --token: anyone on your network can "
                        "use this server")
    log.info("Ctrl-C stops")


@contextlib.contextmanager
def _stop_on_signals(loop: asyncio.AbstractEventLoop) -> Iterator[asyncio.Event]:
    """An event that Ctrl-C, SIGTERM or Ctrl-Break sets while the block runs; a second Ctrl-C exits at once.

    Windows' event loops have no `add_signal_handler`: there a plain handler hands the signal to the
    loop (Python wakes the loop for it), so Ctrl-C still lets every session finish."""
    stop = asyncio.Event()

    def on_signal(signum: int, _frame: object = None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            os._exit(130)
        loop.call_soon_threadsafe(stop.set)

    plain: dict[int, Any] = {}  # signal: the handler it had, for those the loop cannot take
    for sig in STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except NotImplementedError:
            plain[sig] = signal.signal(sig, on_signal)
    try:
        yield stop
    finally:
        for sig, handler in plain.items():  # the loop's own handlers go with the loop
            signal.signal(sig, handler)


class _Lines(logging.Formatter):
    """`emotalk-serve: [warning: ]MESSAGE`, as every command of this project prints."""

    def format(self, record: logging.LogRecord) -> str:
        kind = "warning: " if record.levelno == logging.WARNING else "error: " if record.levelno > logging.WARNING else ""
        return f"{PROG}: {kind}{record.getMessage()}"


def _install_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Lines())
    root = logging.getLogger("emotalk_stream")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


if __name__ == "__main__":
    sys.exit(main())
