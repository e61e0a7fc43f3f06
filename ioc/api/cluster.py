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
MESSAGE_BYTES = 1024 * 1024  # about this much a republished message (a request's events of one source)

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


def messages(items: Sequence[Accepted], max_items: int, max_bytes: int) -> Iterable[tuple[str, bytes]]:
    """The MQTT messages that carry `items`: per source, in order, a JSON array of the events as they were
    posted (a lone event as itself), at most `max_items` events and about `max_bytes` a message. One
    publish per event cost paho ~100 µs of CPU each: a PostgreSQL node's HTTP intake ran at 0.3-0.4 x a
    SQLite node's."""
    by_source: dict[str, list[bytes]] = {}
    for item in items:
        by_source.setdefault(item.event.source, []).append(item.raw)
    for source, raws in by_source.items():
        start, size = 0, 0
        for index, raw in enumerate(raws):
            if index > start and (index - start >= max_items or size + len(raw) + 1 > max_bytes):
                yield source, _array(raws[start:index])
                start, size = index, 0
            size += len(raw) + 1
        yield source, _array(raws[start:])


def _array(raws: list[bytes]) -> bytes:
    return raws[0] if len(raws) == 1 else b"[" + b",".join(raws) + b"]"


class Republisher:
    """In a cluster, what a node accepted over HTTP is published on its MQTT session to
    `ioc/v1/events/{source}` at QoS 1 (CONTRACT §8), the events as they were posted, a JSON array per source
    (`messages`): every node receives them as any MQTT message of events. This one counted them already: on MQTT 5 the broker does not send them back (No Local,
    connectors/mqtt/session.py); on 3.1.1 `echoes` is told of each before it is published, and the MQTT
    intake recognises it when it comes back. `publish` is true once the broker acknowledged every one (the
    HTTP answer waits for it), false when the session is down, the time is up or the broker refused one (an
MQTT 5 PUBACK with a failure reason, e.g. its ACL: a 3.1.1 broker drops such a publish without a word)."""

    def __init__(self, session: MqttSession, *, echoes: Echoes | None = None, max_items: int = 10_000,
                 max_bytes: int = MESSAGE_BYTES) -> None:
        self.session = session
        self.echoes = echoes
        self.max_items = max_items  # [intake] max_items: the receiving nodes refuse a bigger message whole
        self.max_bytes = max_bytes
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
            for source, payload in messages(items, self.max_items, self.max_bytes):
                if echoes is not None:  # before the publish: the echo may come back before it returns
                    echoes.expect(source, payload)
                info = client.publish(EVENTS_PREFIX + source, payload, qos=1)
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
