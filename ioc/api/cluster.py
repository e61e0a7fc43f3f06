"""`GET /api/v1/cluster` (CONTRACT §8): the nodes sharing the store, their role and last heartbeat."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ioc.cluster import ClusterNode

EXAMPLE = {"nodes": [{"node": "ioc-a", "role": "leader", "heartbeat_at": "2026-03-02T01:00:03.200000+00:00"},
                     {"node": "ioc-b", "role": "follower", "heartbeat_at": "2026-03-02T01:00:02.900000+00:00"}]}


class NodeView(BaseModel):
    node: str
    role: str = Field(description="`leader` (holds an unexpired lease) or `follower`.")
    heartbeat_at: str = Field(description="The node's last heartbeat (RFC 3339, UTC, by PostgreSQL's clock).")


class ClusterView(BaseModel):
    nodes: list[NodeView]


def cluster_router(node: ClusterNode) -> APIRouter:
    router = APIRouter(tags=["cluster"])

    # Plain `def`: the roster is read from PostgreSQL (a store that fails is the app's 503).
    @router.get("/api/v1/cluster", response_model=ClusterView, summary="The nodes of the cluster",
                responses={200: {"content": {"application/json": {"example": EXAMPLE}}}},
                description="Every node that has joined the shared store, by name: `leader` or `follower`, and "
                            "its last heartbeat (every `[cluster] lease / 3`; a node silent for longer than the "
                            "lease is down). With SQLite, this daemon alone, the leader.")
    def cluster() -> ClusterView:
        return ClusterView(nodes=[
            NodeView(node=member.node, role="leader" if member.leader else "follower",
                     heartbeat_at=datetime.fromtimestamp(member.heartbeat_at, UTC).isoformat())
            for member in node.members()])

    return router
