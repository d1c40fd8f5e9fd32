"""`emotalk-serve` on Ray Serve: N replicas, each with its own engine and `SessionHub`.

    emotalk-serve --ray --replicas 2                                 (serve/ray_launch.py)
    serve run emotalk_stream.serve.ray_app:app_builder replicas=2 max_streams=48

Each replica is the FastAPI ingress itself: Serve's proxy hands it the WebSocket and relays the
messages both ways for the connection's lifetime, so a session lives in one replica's hub, batched
with that replica's other sessions. The protocol, token check, refusals (1013 beyond
`--max-streams`) and close codes are the plain server's (serve/ray_socket.py). The replica count is
fixed (`--replicas`) or autoscaled on ongoing requests per replica, which are its WebSocket
sessions (`--autoscale MIN:MAX`, `--target-sessions`); each replica takes `--cpus-per-replica` CPUs
and `--gpus-per-replica` GPUs, the engine then running on CUDA. Every handshake answers with the
replica's id in `REPLICA_HEADER`; /stats adds up all replicas (serve/ray_board.py).
"""
# No `from __future__ import annotations`: FastAPI reads the routes' parameter types (WebSocket,
# Request) from real annotations, and Serve's class-based routes do not resolve string ones.
import argparse
import asyncio
import logging
import os
from dataclasses import dataclass

import ray
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.config import DeploymentActorConfig
from websockets.datastructures import Headers

from ..engine import Engine
from ..streamer.cli import TOKEN_ENV
from ..streamer.launch import load_engine
from ..training.errors import UserError
from .hub import STOP_TIMEOUT_S, SessionHub
from .page import CSP, asset
from .protocol import PATH
from .ray_board import REPORT_S, Board
from .ray_router import ROUTER
from .ray_socket import ReplicaServer, StarletteConnection
from ..streamer.websocket_sink import token_refusal
from .websocket_server import EXTRA_CONNECTIONS, FLUSH_TIMEOUT_S

log = logging.getLogger(__name__)

APP = "emotalk"
DEPLOYMENT = "emotalk"
BOARD = "board"
REPLICA_HEADER = "X-EmoTalk-Replica"  # on every WebSocket handshake: the replica serving the session
DRAIN_S = STOP_TIMEOUT_S + FLUSH_TIMEOUT_S + 2 * REPORT_S  # for every replica to finish its sessions
# How long Serve lets a replica it removes (downscaling, a new version) finish its sessions before
# killing it; sessions still open then are closed 1011 by the proxy (serve/ray_proxy.py).
GRACEFUL_SHUTDOWN_S = 120.0
CONSTRUCTOR_RETRIES = 2  # a replica that cannot load its engine fails the deployment quickly


@dataclass(frozen=True)
class ReplicaOptions:
    """What each replica is built with: the plain server's model and limit options (same names, so
    `load_engine` takes it as it takes the command's arguments)."""

    model: str = "default"
    engine: str | None = None
    backend: str | None = None
    lookahead_ms: int | None = None
    threads: int = 1
    max_streams: int = 64
    idle_timeout: float = 10.0
    token: str | None = None
    cuda: bool = False


@dataclass(frozen=True)
class Scaling:
    """How many replicas, and what each one takes from the cluster."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas, instead of a fixed count
    target_sessions: int | None = None  # sessions per replica the autoscaler aims at
    cpus: float = 1.0
    gpus: float = 0.0


def plan(args: argparse.Namespace, token: str | None) -> tuple[ReplicaOptions, Scaling]:
    """The replicas' options and scaling from emotalk-serve's arguments; `UserError` for bad ones."""
    if args.replicas is not None and args.autoscale is not None:
        raise UserError("--replicas and --autoscale contradict each other: give a fixed count or MIN:MAX")
    replicas = 1 if args.replicas is None else args.replicas
    if replicas < 1:
        raise UserError(f"--replicas {replicas}: give 1 or more")
    autoscale = _autoscale(args.autoscale) if args.autoscale is not None else None
    target = args.target_sessions
    if target is not None and (autoscale is None or not 1 <= target <= args.max_streams):
        raise UserError(f"--target-sessions {target}: give it with --autoscale, from 1 to --max-streams "
                        f"({args.max_streams})")
    cpus = 1.0 if args.cpus_per_replica is None else args.cpus_per_replica
    gpus = 0.0 if args.gpus_per_replica is None else args.gpus_per_replica
    if not (cpus >= 0 and gpus >= 0):
        raise UserError(f"--cpus-per-replica {cpus} / --gpus-per-replica {gpus}: give 0 or more")
    if gpus and args.backend == "onnxruntime":
        raise UserError("--gpus-per-replica with --backend onnxruntime: ONNX Runtime runs on the CPU here; "
                        "give a checkpoint (--model, torch on CUDA) or a TensorRT --engine")
    options = ReplicaOptions(args.model, args.engine, args.backend, args.lookahead_ms, args.threads, args.max_streams,
                             args.idle_timeout, token, cuda=gpus > 0)
    return options, Scaling(replicas, autoscale, target, cpus, gpus)


def _autoscale(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    if not (sep and low.isdigit() and high.isdigit() and 0 <= int(low) <= int(high) and int(high) >= 1):
        raise UserError(f"--autoscale {text}: give MIN:MAX replicas, e.g. 1:4 (MIN may be 0, MAX at least 1 "
                        f"and not below MIN)")
    return int(low), int(high)


def build(options: ReplicaOptions, scaling: Scaling) -> serve.Application:
    """The app, for `serve.run(build(...), name=APP, route_prefix="/")`."""
    settings: dict = {
        "ray_actor_options": {"num_cpus": scaling.cpus, "num_gpus": scaling.gpus},
        # Each session goes to the replica with the fewest (serve/ray_router.py); beyond --max-streams
        # there its hub refuses it (1013). Serve queues or refuses (503) only far beyond, as the
        # plain server refuses connections (websocket_server.py).
        "max_ongoing_requests": 2 * options.max_streams + EXTRA_CONNECTIONS,
        "max_queued_requests": EXTRA_CONNECTIONS,
        "request_router_config": {"request_router_class": ROUTER},
    }
    if scaling.autoscale is None:
        settings["num_replicas"] = scaling.replicas
    else:
        low, high = scaling.autoscale
        target = scaling.target_sessions or max(1, options.max_streams * 3 // 4)
        settings["autoscaling_config"] = {"min_replicas": low, "initial_replicas": max(low, 1), "max_replicas": high,
                                          "target_ongoing_requests": target}
    return Replica.options(**settings).bind(options)


def app_builder(args: dict) -> serve.Application:
    """For `serve run emotalk_stream.serve.ray_app:app_builder KEY=VALUE...` and a RayService's
    `import_path`: the keys are emotalk-serve's options (max_streams=48, autoscale=1:4, ...), read
    by its own parser; the token comes from $EMOTALK_TOKEN."""
    from .cli import build_parser, check_token
    argv = ["--ray"] + [f"--{key.replace('_', '-')}={value}" for key, value in args.items()]
    parsed = build_parser().parse_args(argv)
    options, scaling = plan(parsed, check_token(os.environ.get(TOKEN_ENV) or None))
    return build(options, scaling)


def load_replica_engine(options: ReplicaOptions) -> Engine:
    """The plain server's engine, or with a GPU: a checkpoint on CUDA, or a TensorRT engine."""
    if not options.cuda:
        return load_engine(options)  # type: ignore[arg-type]  # the same attribute names
    if options.engine:
        return Engine.from_artifact(options.engine, "tensorrt", options.threads)
    return Engine.load(options.model, options.backend or "torch", lookahead_ms=options.lookahead_ms, device="cuda",
                       threads=options.threads)


def _headers(raw: list[tuple[bytes, bytes]]) -> Headers:
    """ASGI headers as `token_refusal` reads them (latin-1, as websockets decodes them)."""
    return Headers([(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw])


def _unauthorized(refusal: str) -> Response:
    return PlainTextResponse(f"{refusal}\n", status_code=401, headers={"WWW-Authenticate": "Bearer"})


api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(name=DEPLOYMENT, graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S,
                  max_constructor_retry_count=CONSTRUCTOR_RETRIES,
                  deployment_actors=[DeploymentActorConfig(name=BOARD, actor_class=Board)])
@serve.ingress(api)
class Replica:
    """One engine, one hub, the WebSocket sessions Serve's proxy routes here."""

    async def __init__(self, options: ReplicaOptions) -> None:
        self._reporter: asyncio.Task | None = None  # set once everything has started
        self._drained: asyncio.Future | None = None
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        self._identity = {"replica": self.replica, "actor": context.replica_id.to_full_id_str(),
                          "node": ray.get_runtime_context().get_node_id()}
        self._token = options.token.encode() if options.token else None
        self.hub = SessionHub(load_replica_engine(options), max_streams=options.max_streams)
        self.server = ReplicaServer(self.hub, token=options.token, idle_timeout=options.idle_timeout)
        await self.hub.start()
        self._board = serve.get_deployment_actor(BOARD)
        self._reporter = asyncio.create_task(self._report())

    @api.websocket(PATH)
    async def stream(self, websocket: WebSocket) -> None:
        refusal = token_refusal(_headers(websocket.headers.raw), websocket.url.query, self._token)
        if refusal is not None:
            log.info("refused a session: %s", refusal)
            await websocket.send_denial_response(_unauthorized(refusal))
            return
        await websocket.accept(headers=[(REPLICA_HEADER.lower().encode(), self.replica.encode())])
        await self.server.serve_connection(StarletteConnection(websocket))

    @api.get("/stats")
    async def stats(self, request: Request) -> Response:
        refusal = token_refusal(_headers(request.headers.raw), request.url.query, self._token)
        if refusal is not None:
            return _unauthorized(refusal)
        return JSONResponse(await self.summary())

    @api.get("/health")
    async def health(self) -> Response:
        return PlainTextResponse("ok\n")

    @api.get("/{path:path}")
    async def files(self, path: str) -> Response:
        """The live demo page and its files, as the plain server serves them (serve/page.py)."""
        found = asset(f"/{path}")
        if found is None:
            return PlainTextResponse(f"not found; sessions are at {PATH}, the page at /\n", status_code=404)
        return Response(found[1], media_type=found[0],
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP})

    async def summary(self) -> dict:
        """/stats: every replica's counters, added up (serve/ray_board.py)."""
        return await self._board.summary.remote()

    async def drain(self) -> None:
        """Called once, on any replica, by the command at Ctrl-C: every replica finishes its sessions."""
        await self._board.drain.remote()
        await asyncio.shield(self._begin_drain())

    async def __del__(self) -> None:
        """Serve stops this replica (app deleted, downscaled) once its sessions have ended or after
        `GRACEFUL_SHUTDOWN_S`; also after a failed constructor, when there is nothing to stop."""
        if self._reporter is not None:
            self._reporter.cancel()
            await self._begin_drain()

    def _begin_drain(self) -> asyncio.Future:
        """As the plain server at Ctrl-C: no new sessions; each open one gets its remaining frames,
        the final one and close 1001. Once; the future ends when every session has."""
        if self._drained is None:
            self._drained = asyncio.ensure_future(self._stop())
        return self._drained

    async def _stop(self) -> None:
        self.server.stop_accepting()
        await self.hub.stop()
        await self.server.close()

    async def _report(self) -> None:
        while True:
            try:
                if await self._board.report.remote({**self._identity, **self.hub.stats()}):
                    self._begin_drain()
            except RayActorError:  # the board was restarted: find the new one
                try:
                    self._board = serve.get_deployment_actor(BOARD)
                except ValueError:
                    pass  # not registered yet: next time
            await asyncio.sleep(REPORT_S)

