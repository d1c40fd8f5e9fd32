"""`emotalk-serve --ray`: the Ray Serve app (serve/ray_app.py), started and stopped by one command.

Without `--ray-address` the command starts a Ray instance on this machine and stops it at the end;
with one (`auto`, `HOST:PORT`, `ray://HOST:PORT`) it deploys onto that cluster and at the end
deletes only its own app. At Ctrl-C or SIGTERM every replica first finishes its sessions (remaining
frames, the final one, close 1001), as the plain server does. Ray is imported only once --ray is
given, so the plain server runs without it.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..streamer.address import LOCAL_HOST, all_interfaces
from ..streamer.launch import with_signals
from ..training.errors import UserError
from .protocol import PATH
from .websocket_server import bind_error

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from .ray_app import Scaling

log = logging.getLogger("emotalk_stream.serve.cli")

RAY_ONLY = ("replicas", "autoscale", "target_sessions", "ray_address", "cpus_per_replica", "gpus_per_replica")
PROXY_WAIT_S = 60.0  # for Serve's proxies to listen once the app is up
POLL_S = 0.5
CONNECT_S = 5.0  # to find out that nothing listens at --ray-address
QUIET = {"log_level": "WARNING"}  # Serve's components on the console; Ray's log files have everything


def uses_ray(args: argparse.Namespace) -> bool:
    """Whether the command is for Ray (--ray, or an option only Ray takes)."""
    return args.ray or any(getattr(args, name) is not None for name in RAY_ONLY)


def serve_on_ray(args: argparse.Namespace, token: str | None, tls: tuple[Path, Path] | None) -> int:
    """Deploy, announce, serve until a signal, drain, and take the app (and a local Ray) down."""
    if not args.ray:
        given = next(name for name in RAY_ONLY if getattr(args, name) is not None)
        raise UserError(f"--{given.replace('_', '-')} is an option of Ray Serve: add --ray")
    if args.grpc_port is not None:
        raise UserError("--grpc-port: on Ray only WebSocket clients are served; run emotalk-serve without --ray "
                        "for the Audio2Face-3D gRPC API")
    if args.port == 0:
        raise UserError("--port 0: Ray Serve's proxies listen on one fixed port on every node: give one, e.g. 8765")
    from .ray_app import plan
    options, scaling = plan(args, token)
    local = args.ray_address is None
    if local:
        _check_port(args.host, args.port)
    elif args.ray_address != "auto":
        _check_cluster(args.ray_address)
    import ray
    from ray import serve

    from .ray_app import APP, DRAIN_S, build
    from .ray_proxy import PROXY_CALLBACK, PROXY_ENV
    if local:
        os.environ.setdefault(PROXY_ENV, PROXY_CALLBACK)  # the local Ray's proxy inherits it
    try:
        # Ray's notices and the replicas' logs stay in Ray's log files unless --debug.
        ray.init(address=args.ray_address or "local", include_dashboard=False,
                 logging_level=logging.INFO if args.debug else logging.ERROR, log_to_driver=args.debug)
    except (ConnectionError, ValueError) as exc:
        raise UserError(_no_cluster(args.ray_address, str(exc))) from None
    try:
        http = {"host": args.host, "port": args.port}
        if tls:
            http.update(ssl_certfile=str(tls[0]), ssl_keyfile=str(tls[1]))
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve's progress lines; ours say it
        serve.start(http_options=http, logging_config=QUIET)
        log.info("starting %s on Ray (%s)", _replicas_text(options.max_streams, scaling),
                 "a local instance" if local else args.ray_address)
        try:
            serve.run(build(options, scaling), name=APP, route_prefix="/", blocking=False, logging_config=QUIET)
        except RuntimeError:  # Serve's own message only says that the deployment failed
            raise UserError(f"the replicas did not start: {_replica_error(serve)}") from None
        _wait_for_proxies(serve)
        _announce(args, token, tls, local, ray)
        with_signals(lambda stop: stop.wait())
        handle = serve.get_app_handle(APP)
        log.info("stopping: finishing %d session(s)", handle.summary.remote().result().get("sessions", 0))
        handle.drain.remote().result(timeout_s=DRAIN_S)
        _wait_until_idle(handle, DRAIN_S)
        if local:
            serve.shutdown()
        else:
            serve.delete(APP)
    finally:
        ray.shutdown()
    return 0


def _check_port(host: str, port: int) -> None:
    """A port in use, or an address not of this machine, as the plain server reports it."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(bind_error(exc, "--port", host, port)) from None


def _check_cluster(address: str) -> None:
    """A cluster address where nothing listens, refused at once (Ray itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not (host and port.isdigit()):
        raise UserError(_no_cluster(address, "not HOST:PORT"))
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_S).close()
    except OSError as exc:
        raise UserError(_no_cluster(address, exc.strerror or str(exc))) from None


def _no_cluster(address: str, why: str) -> str:
    return (f"--ray-address {address}: no Ray cluster there ({why}); start one with `ray start --head`, "
            f"or give auto, HOST:PORT (the head's GCS port, 6379 by default) or ray://HOST:10001")


def _replicas_text(max_streams: int, scaling: "Scaling") -> str:
    count = (f"{scaling.replicas} replica(s)" if scaling.autoscale is None else
             f"{scaling.autoscale[0]} to {scaling.autoscale[1]} replicas (autoscaled)")
    gpus = f" and {scaling.gpus:g} GPU" if scaling.gpus else ""
    return f"{count}, up to {max_streams} sessions, {scaling.cpus:g} CPU{gpus} each"


def _replica_error(serve: ModuleType) -> str:
    """The replica's own error, the last line of the traceback Serve keeps in the deployment's status."""
    from .ray_app import APP, DEPLOYMENT
    message = serve.status().applications[APP].deployments[DEPLOYMENT].message
    errors = [line.strip() for line in message.splitlines() if "Error: " in line or "Exception: " in line]
    return errors[-1].split("UserError: ", 1)[-1] if errors else message.strip()


def _wait_for_proxies(serve: ModuleType) -> None:
    deadline = time.monotonic() + PROXY_WAIT_S
    while True:
        states = {str(state).rsplit(".", 1)[-1] for state in serve.status().proxies.values()}
        if states and states <= {"HEALTHY"}:
            return
        if time.monotonic() > deadline:
            raise UserError(f"Ray Serve's HTTP proxies did not start within {PROXY_WAIT_S:.0f} s ({sorted(states)}): "
                            f"is the port in use on a node? See the proxy logs in Ray's session folder")
        time.sleep(POLL_S)


def _wait_until_idle(handle: "DeploymentHandle", seconds: float) -> None:
    """Until no replica reports a session, or `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and handle.summary.remote().result().get("sessions"):
        time.sleep(POLL_S)


def _announce(args: argparse.Namespace, token: str | None, tls: tuple[Path, Path] | None, local: bool,
              ray: ModuleType) -> None:
    query = "?token=TOKEN" if token else ""
    if not all_interfaces(args.host):
        hosts = [args.host]
    elif local:
        hosts = [LOCAL_HOST]
    else:
        hosts = sorted(node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"])
    for host in hosts:
        address = f"[{host}]:{args.port}" if ":" in host else f"{host}:{args.port}"
        log.info("WebSocket sessions at %s://%s%s%s", "wss" if tls else "ws", address, PATH, query)
        page = f"{'https' if tls else 'http'}://{address}/"
        log.info("page at %s, health at %shealth, stats at %sstats%s", page, page, page, query)
    if local:
        log.info("Ray runs on this machine until the end; its logs are in /tmp/ray/session_latest/logs")
    else:
        log.info("the app is deleted at the end; the cluster stays")
    if all_interfaces(args.host) and not token:
        log.warning("listening on every network interface without --token: anyone on your network can use this server")
    log.info("Ctrl-C stops")
