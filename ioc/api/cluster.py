"""`GET /api/v1/cluster` (CONTRACT §8): the nodes sharing the store, their role and last heartbeat; and
the HTTP intake's republish to the broker, so an event posted to one node reaches every node."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import structlog
from fastapi import APIRouter
from prometheus_client.core import Metric
from pydantic import BaseModel, Field

from ioc.cluster import ClusterNode
from ioc.connectors.mqtt.echoes import Echoes
from ioc.connectors.mqtt.session import MqttSession
from ioc.connectors.mqtt.topics import EVENTS_PREFIX
from ioc.ingest.decode import Accepted
from ioc.metrics import counter

log = structlog.get_logger("ioc.cluster")

POLL = 0.005  # seconds between looks at the broker's acknowledgements

EXAMPLE = {"nodes": [{"node": "ioc-a", "role": "leader", "heartbeat_at": "2026-03-02T01:00:03.200000+00:00"},
                     {"node": "ioc-b", "role": "follower", "heartbeat_at": "2026-03-02T01:00:02.900000+00:00"}]}


class NodeView(BaseModel):
    node: str
    role: str = Field(description="`leader` (holds an unexpired lease), `follower`, or `down` (no heartbeat "
                                  "for longer than the lease).")
    heartbeat_at: str = Field(description="The node's last heartbeat (RFC 3339, UTC, by PostgreSQL's clock).")


class ClusterView(BaseModel):
    nodes: list[NodeView]


def cluster_router(node: ClusterNode) -> APIRouter:
    router = APIRouter(tags=["cluster"])

    # Plain `def`: the roster is read from PostgreSQL (a store that fails is the app's 503).
    @router.get("/api/v1/cluster", response_model=ClusterView, summary="The nodes of the cluster",
                responses={200: {"content": {"application/json": {"example": EXAMPLE}}}},
                description="Every node that has joined the shared store, by name: `leader`, `follower` or `down`, "
                            "and its last heartbeat (every `[cluster] lease / 3`; a node silent for longer than the "
                            "lease is `down`, forgotten after `[cluster] forget_after`; a node that stops "
                            "gracefully leaves at once). With SQLite, this daemon alone, the leader.")
    def cluster() -> ClusterView:
        return ClusterView(nodes=[
            NodeView(node=member.node, role=member.role,
                     heartbeat_at=datetime.fromtimestamp(member.heartbeat_at, UTC).isoformat())
            for member in node.members()])

    return router


class Republisher:
    """In a cluster, what a node accepted over HTTP is published on its MQTT session to
    `ioc/v1/events/{source}` at QoS 1 (CONTRACT §8), each event as it was posted: every node receives it as
    any MQTT event. This one counted them already: on MQTT 5 the broker does not send them back (No Local,
    connectors/mqtt/session.py); on 3.1.1 `echoes` is told of each before it is published, and the MQTT
    intake recognises it when it comes back. `publish` is true once the broker acknowledged every one (the
    HTTP answer waits for it), false when the session is down, the time is up or the broker refused one (an
MQTT 5 PUBACK with a failure reason, e.g. its ACL: a 3.1.1 broker drops such a publish without a word)."""

    def __init__(self, session: MqttSession, *, echoes: Echoes | None = None) -> None:
        self.session = session
        self.echoes = echoes
        self.published = 0
        self.failed = 0

    async def publish(self, items: Sequence[Accepted], timeout: float) -> bool:
        client = self.session.client
        if client is None or self.session.closed:
            self.failed += len(items)
            return False
        infos = []
        echoes = self.echoes
        started = time.monotonic()
        # FastClient: one wake-up of paho's network thread for the request's publishes, not one each.
        with getattr(client, "batched", contextlib.nullcontext)():
            for item in items:
                if echoes is not None:  # before the publish: the echo may come back before it returns
                    echoes.expect(item.event.source, item.raw)
                info = client.publish(EVENTS_PREFIX + item.event.source, item.raw, qos=1)
                if info.rc == mqtt.MQTT_ERR_NO_CONN:
                    info.rc = mqtt.MQTT_ERR_SUCCESS  # queued by paho, sent on reconnect: `is_published` tells
                infos.append(info)
        deadline = time.monotonic() + timeout
        done = 0  # the publishes before this one are acknowledged: each look goes on from here
        while True:
            try:
                while done < len(infos) and infos[done].is_published():
                    done += 1
                if done == len(infos):
                    refusal = self.session.refusal((info.mid for info in infos), started)
                    if refusal is None:
                        self.published += len(items)
                        return True
                    # Acknowledged, but refused (MQTT 5): the other nodes will never see it; a 202 would lie.
                    log.warning("cluster.republish_refused", reason=refusal,
                                hint="the broker's ACL must let the daemon's user write ioc/v1/events/#")
                    break
            except (ValueError, RuntimeError) as error:  # refused for good by paho
                log.warning("cluster.republish_failed", error=str(error))
                break
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL)
        self.failed += len(items)
        return False

    def metrics(self) -> Iterable[Metric]:
        yield counter("ioc_cluster_republished", "Events taken over HTTP and published to the broker for the other "
                      "nodes (CONTRACT §8), by outcome (failed: not acknowledged in time, answered 503).",
                      ("outcome",), {("published",): float(self.published), ("failed",): float(self.failed)})
        if self.echoes is not None:
            yield from self.echoes.collect()
