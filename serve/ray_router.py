"""Serve's request router for emotalk sessions: each new session goes to the replica with the fewest.

Serve's default router prefers replicas on the proxy's own node and compares two random replicas.
A WebSocket session holds its replica for minutes, and a replica refuses sessions beyond
`--max-streams` itself (1013, as the plain server), so the default would fill the proxy node's
replica and refuse sessions while another replica had room. This router hands every replica to
Serve's selection, which takes the one with the fewest ongoing requests (its sessions) among those
that have room; sessions are refused only when the emptiest replica is full.
"""
from __future__ import annotations

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

ROUTER = "emotalk_stream.serve.ray_router:FewestSessions"


class FewestSessions(FIFOMixin, RequestRouter):
    """All replicas as one rank: Serve picks the least loaded of them."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        return [candidate_replicas]
