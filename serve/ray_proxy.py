"""A middleware for Ray Serve's HTTP proxy: a WebSocket whose replica dies gets a close with a reason.

Without it, when a replica dies mid-session the proxy's ASGI call just returns and uvicorn drops
the TCP connection: the client sees 1006 and no reason. With it, the client gets 1011 and a reason
that says to reconnect. Serve loads proxy middlewares from the environment variable `PROXY_ENV`,
read by the proxy process, so it is set where the Ray nodes start: `emotalk-serve --ray` sets it
for the Ray instance it starts; on an existing cluster it goes into `ray start`'s environment (or
the KubeRay pod spec): docs/serving-ray.md.
"""
from __future__ import annotations

import contextlib

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .protocol import INTERNAL

PROXY_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "emotalk_stream.serve.ray_proxy.middlewares"
REPLICA_LOST = "the replica serving this session stopped: reconnect to continue on another"


class ReplicaLossClose:
    """Closes (1011, `REPLICA_LOST`) an accepted WebSocket that the replica left without a close."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        accepted = ended = False

        async def watch_send(message: Message) -> None:
            nonlocal accepted, ended
            accepted = accepted or message["type"] == "websocket.accept"
            ended = ended or message["type"] == "websocket.close"
            await send(message)

        async def watch_receive() -> Message:
            nonlocal ended
            message = await receive()
            ended = ended or message["type"] == "websocket.disconnect"
            return message

        try:
            await self.app(scope, watch_receive, watch_send)
        finally:
            if accepted and not ended:
                with contextlib.suppress(OSError, RuntimeError):  # the client has gone as well
                    await send({"type": "websocket.close", "code": INTERNAL, "reason": REPLICA_LOST})


def middlewares() -> list[Middleware]:
    """Serve's proxy callback (`PROXY_ENV`)."""
    return [Middleware(ReplicaLossClose)]
