"""The operators' API (docs/http-api.md alerts, silences, KPIs, SSE stream) through a real uvicorn server on a
loopback port with an httpx client; the alert manager's store is a SQLite file of the test's own."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from ioc.rules.updates import AlertUpdate

from ioc.alerts.alert import Alert, Change
from ioc.alerts.manager import AlertManager
from ioc.alerts.notify import StreamNotifier
from ioc.alerts.store import AlertStore
from ioc.api import create_app, serve
from ioc.api.stream import Broadcaster
from ioc.config import Settings, token_sha256
from ioc.ingest.dedup import DedupIndex
from ioc.ingest.pipeline import Pipeline
from ioc.kpis import Kpi, KpiBoard
from ioc.metrics import Metrics
from tests.servers import free_port

OPERATOR, VENDOR = "token-operator", "token-vendor"
CONTRACT_KEYS = {"id", "fingerprint", "rule", "severity", "state", "labels", "summary", "value", "started_at",
                 "fired_at", "resolved_at", "acknowledged", "silenced"}


def settings_for(port: int) -> Settings:
    return Settings.model_validate({
        "http": {"listen": f"127.0.0.1:{port}"},
        "vendors": [{"name": "viettel", "token_sha256": token_sha256(VENDOR), "sources": ["viettel-ran"]}],
        "operators": [{"name": "truc-ban-1", "token_sha256": token_sha256(OPERATOR)}],
    })


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def update(state: str, *, rule: str = "cell-down", area: str = "22723", at: float | None = None,
           **labels: str) -> AlertUpdate:
    return AlertUpdate(rule=rule, labels={"area": area, **labels}, severity="warning",
                       state=state, summary=f"Trạm {labels.get('entity', '?')} mất sóng",  # type: ignore[arg-type]
                       value=1.0, at=time.time() if at is None else at)


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.got: list[tuple[Alert, Change]] = []

    def notify(self, alert: Alert, change: Change) -> None:
        self.got.append((alert, change))


@dataclass
class Api:
    url: str
    manager: AlertManager
    board: KpiBoard
    stream: Broadcaster
    recorder: Recorder
    metrics: Metrics

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10)


@contextlib.asynccontextmanager
async def running_api(db: Path) -> AsyncIterator[Api]:
    port = free_port()
    settings = settings_for(port)
    pipeline = Pipeline(sinks=[], dedup=DedupIndex(None, window=86400, max_keys=1000),
                        max_bytes=settings.http.max_body, max_future=300)
    stream = Broadcaster(heartbeat=0.5)
    board = KpiBoard()
    board.listeners.append(stream.publish_kpi)
    recorder = Recorder()
    manager = AlertManager(AlertStore(db), notifiers=[StreamNotifier(stream), recorder])
    metrics = Metrics()
    metrics.add(manager.metrics)
    metrics.add(stream.metrics)
    app = create_app(settings=settings, pipeline=pipeline, metrics=metrics, readiness=list,
                     alerts=manager, kpis=board, stream=stream)
    started = asyncio.Event()
    task = asyncio.create_task(serve(app, settings.http, started=started))
    try:
        await asyncio.wait_for(started.wait(), 10)
        yield Api(f"http://127.0.0.1:{port}", manager, board, stream, recorder, metrics)
    finally:
        stream.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        manager.close()


@pytest.fixture
def db(store_url: str) -> str:
    return store_url  # every test here runs on SQLite and on PostgreSQL


@pytest.fixture
async def api(db: Path) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        yield running


# --- alerts --------------------------------------------------------------------------------------------

async def test_alerts_are_listed_and_read_without_a_token(api: Api) -> None:
    firing = api.manager.apply(update("firing", entity="BTN0123"))
    pending = api.manager.apply(update("pending", rule="coverage-outage", area="60"))
    assert firing and pending
    async with api.client() as client:
        listed = await client.get("/api/v1/alerts")
        one = await client.get(f"/api/v1/alerts/{firing.id}")
        only_pending = await client.get("/api/v1/alerts", params={"state": "pending"})
        warnings = await client.get("/api/v1/alerts", params={"severity": "critical"})
        missing = await client.get("/api/v1/alerts/0123456789abcdef")
        bad_state = await client.get("/api/v1/alerts", params={"state": "open"})
        bad_severity = await client.get("/api/v1/alerts", params={"severity": "high"})
    assert listed.status_code == 200
    assert {item["id"] for item in listed.json()} == {firing.id, pending.id}
    body = one.json()
    assert set(body) >= CONTRACT_KEYS
    assert body["state"] == "firing" and body["labels"] == {"area": "22723", "entity": "BTN0123"}
    assert body["acknowledged"] is None and body["silenced"] is False and body["resolved_at"] is None
    assert [item["id"] for item in only_pending.json()] == [pending.id]
    assert warnings.json() == []
    assert missing.status_code == 404 and missing.json() == {"error": "no alert with id '0123456789abcdef'"}
    assert bad_state.status_code == 400
    assert bad_state.json() == {
        "error": "state: 'open' is not one of pending, firing, acknowledged, resolved"}
    assert bad_severity.status_code == 400 and "severity: 'high'" in bad_severity.json()["error"]


async def test_ack_and_unack_need_an_operator_and_answer_the_alert(api: Api) -> None:
    firing = api.manager.apply(update("firing", entity="BTN0123"))
    pending = api.manager.apply(update("pending", entity="BTN0456"))
    assert firing and pending
    path = f"/api/v1/alerts/{firing.id}/ack"
    async with api.client() as client:
        none = await client.post(path)
        bad = await client.post(path, headers=auth("not-a-token"))
        vendor = await client.post(path, headers=auth(VENDOR))
        assert [none.status_code, bad.status_code, vendor.status_code] == [401, 401, 403]
        assert set(none.json()) == {"error"} and none.headers["www-authenticate"] == "Bearer"
        assert "needs an operator token" in vendor.json()["error"]
        assert api.manager.get(firing.id).acknowledged is None
        acked = await client.post(path, headers=auth(OPERATOR))
        assert acked.status_code == 200
        assert acked.json()["id"] == firing.id and acked.json()["state"] == "firing"
        assert acked.json()["acknowledged"]["by"] == "truc-ban-1"
        listed = await client.get("/api/v1/alerts", params={"state": "acknowledged"})
        firing_list = await client.get("/api/v1/alerts", params={"state": "firing"})
        assert [item["id"] for item in listed.json()] == [firing.id]
        assert firing.id in {item["id"] for item in firing_list.json()}
        conflict = await client.post(f"/api/v1/alerts/{pending.id}/ack", headers=auth(OPERATOR))
        assert conflict.status_code == 409
        assert conflict.json() == {"error": f"alert {pending.id!r} is pending: only a firing alert can be "
                                            "acknowledged"}
        unknown = await client.post("/api/v1/alerts/nope/ack", headers=auth(OPERATOR))
        assert unknown.status_code == 404 and set(unknown.json()) == {"error"}
        unacked = await client.post(f"/api/v1/alerts/{firing.id}/unack", headers=auth(OPERATOR))
        assert unacked.status_code == 200 and unacked.json()["acknowledged"] is None
        vendor_unack = await client.post(f"/api/v1/alerts/{firing.id}/unack", headers=auth(VENDOR))
        assert vendor_unack.status_code == 403
    audit = api.manager.audit_log(target=firing.id)
    assert [(entry.actor, entry.action) for entry in audit] == [("truc-ban-1", "alert.unack"),
                                                                ("truc-ban-1", "alert.ack")]


async def test_resolved_alerts_are_listed_with_state_resolved(api: Api) -> None:
    firing = api.manager.apply(update("firing", entity="BTN0123"))
    api.manager.apply(update("resolved", entity="BTN0123"))
    assert firing is not None
    async with api.client() as client:
        active = await client.get("/api/v1/alerts")
        resolved = await client.get("/api/v1/alerts", params={"state": "resolved"})
        ack = await client.post(f"/api/v1/alerts/{firing.id}/ack", headers=auth(OPERATOR))
    assert active.json() == []
    assert [item["id"] for item in resolved.json()] == [firing.id]
    assert resolved.json()[0]["resolved_at"] is not None
    assert ack.status_code == 409 and "is resolved" in ack.json()["error"]


# --- silences ------------------------------------------------------------------------------------------

SILENCE = {"matchers": [{"name": "area", "value": "22723", "op": "="},
                        {"name": "rule", "value": "cell-down|coverage-outage", "op": "=~"}],
           "duration": "2h", "comment": "bảo trì"}


async def test_silences_crud_with_status_and_muting(api: Api) -> None:
    alert = api.manager.apply(update("firing", entity="BTN0123"))
    other = api.manager.apply(update("firing", area="22724", entity="BTN0999"))
    assert alert and other
    async with api.client() as client:
        none = await client.post("/api/v1/silences", json=SILENCE)
        vendor = await client.post("/api/v1/silences", json=SILENCE, headers=auth(VENDOR))
        assert (none.status_code, vendor.status_code) == (401, 403)
        created = await client.post("/api/v1/silences", json=SILENCE, headers=auth(OPERATOR))
        assert created.status_code == 201 and set(created.json()) == {"id"}
        silence_id = created.json()["id"]
        listed = (await client.get("/api/v1/silences")).json()
        assert [item["id"] for item in listed] == [silence_id]
        item = listed[0]
        assert item["status"] == "active" and item["author"] == "truc-ban-1" and item["comment"] == "bảo trì"
        assert item["matchers"] == SILENCE["matchers"]
        assert item["starts_at"] and item["ends_at"] > item["starts_at"]
        muted = (await client.get(f"/api/v1/alerts/{alert.id}")).json()
        assert muted["silenced"] is True and muted["silenced_by"] == [silence_id]
        assert (await client.get(f"/api/v1/alerts/{other.id}")).json()["silenced"] is False
        # Silenced alerts are still listed.
        assert alert.id in {a["id"] for a in (await client.get("/api/v1/alerts")).json()}

        assert (await client.delete(f"/api/v1/silences/{silence_id}")).status_code == 401
        vendor_delete = await client.delete(f"/api/v1/silences/{silence_id}", headers=auth(VENDOR))
        assert vendor_delete.status_code == 403
        deleted = await client.delete(f"/api/v1/silences/{silence_id}", headers=auth(OPERATOR))
        assert deleted.status_code == 204 and deleted.content == b""
        after = (await client.get("/api/v1/silences")).json()
        assert [(s["id"], s["status"]) for s in after] == [(silence_id, "expired")]
        expired_only = (await client.get("/api/v1/silences", params={"status": "expired"})).json()
        assert [s["id"] for s in expired_only] == [silence_id]
        assert (await client.get(f"/api/v1/alerts/{alert.id}")).json()["silenced"] is False
        unknown = await client.delete("/api/v1/silences/nope", headers=auth(OPERATOR))
        assert unknown.status_code == 404 and unknown.json() == {"error": "no silence with id 'nope'"}
    actions = [(entry.actor, entry.action) for entry in api.manager.audit_log(target=silence_id)]
    assert actions == [("truc-ban-1", "silence.expire"), ("truc-ban-1", "silence.create")]


@pytest.mark.parametrize(("body", "error"), [
    ({**SILENCE, "matchers": [{"name": "area", "value": "(227", "op": "=~"}]},
     "matchers.0: value: '(227' is not a valid regular expression"),
    ({**SILENCE, "matchers": [{"name": "area", "value": "1", "op": "~"}]}, "matchers.0.op:"),
    ({**SILENCE, "duration": None, "ends_at": "2020-01-01T00:00:00+07:00"},
     "ends_at: 2019-12-31T17:00:00+00:00 is in the past"),
    ({**SILENCE, "duration": None, "starts_at": "2999-01-02T00:00:00+07:00",
      "ends_at": "2999-01-01T00:00:00+07:00"}, "is not after starts_at"),
    ({**SILENCE, "color": "red"}, "color: unknown key"),
    ({"matchers": [{"name": "area", "value": "", "op": "="}], "duration": "1h"}, "would mute every alert"),
])
async def test_bad_silences_are_400_with_the_reason(api: Api, body: dict[str, Any], error: str) -> None:
    async with api.client() as client:
        response = await client.post("/api/v1/silences", json=body, headers=auth(OPERATOR))
    assert response.status_code == 400 and set(response.json()) == {"error"}
    assert error in response.json()["error"]
    assert api.manager.list_silences() == []


async def test_a_silence_body_that_is_not_json_or_too_big(api: Api) -> None:
    async with api.client() as client:
        broken = await client.post("/api/v1/silences", content=b"{", headers=auth(OPERATOR))
        big = await client.post("/api/v1/silences", content=b" " * 70_000, headers=auth(OPERATOR))
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
    assert big.status_code == 413 and set(big.json()) == {"error"}


# --- KPIs and the stream -------------------------------------------------------------------------------

def kpi(area: str, value: float) -> Kpi:
    return Kpi(kpi="kpi.dossier.online_share", area=area, level="commune", value=value, target=60.0,
               updated_at=1_772_409_600.0)


async def test_kpis_are_listed_by_area(api: Api) -> None:
    api.board.publish(kpi("22723", 71.5))
    api.board.publish(kpi("22724", 40.0))
    async with api.client() as client:
        everything = (await client.get("/api/v1/kpis")).json()
        one = (await client.get("/api/v1/kpis", params={"area": "22724"})).json()
    assert [item["area"] for item in everything] == ["22723", "22724"]
    assert one == [{"kpi": "kpi.dossier.online_share", "area": "22724", "level": "commune", "value": 40.0,
                    "target": 60.0, "updated_at": "2026-03-02T00:00:00+00:00"}]


async def read_events(lines: AsyncIterator[str], count: int, timeout: float = 10.0) -> list[tuple[str, Any]]:
    """The next `count` SSE events other than heartbeat pings, as (event, data)."""
    found: list[tuple[str, Any]] = []
    event, data = "", ""

    async def collect() -> None:
        nonlocal event, data
        async for line in lines:
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
            elif line == "" and event:
                if event != "ping":  # heartbeats, every `heartbeat` seconds
                    found.append((event, orjson.loads(data)))
                event, data = "", ""
                if len(found) == count:
                    return

    await asyncio.wait_for(collect(), timeout)
    return found


async def test_the_stream_sends_alert_and_kpi_events(api: Api) -> None:
    async with api.client() as client, client.stream("GET", "/api/v1/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        first = await asyncio.wait_for(lines.__anext__(), 5)
        assert first == "retry: 5000"
        alert = api.manager.apply(update("firing", entity="BTN0123"))
        api.board.publish(kpi("22723", 55.0))
        events = await read_events(lines, 2)
        assert alert is not None
        assert events[0][0] == "alert" and events[0][1]["id"] == alert.id
        assert events[0][1]["change"] == "firing" and set(events[0][1]) >= CONTRACT_KEYS
        assert events[1] == ("kpi", kpi("22723", 55.0).as_json())
        # A silenced alert is still sent on the stream.
        async with api.client() as operator:
            created = await operator.post("/api/v1/silences", json=SILENCE, headers=auth(OPERATOR))
            assert created.status_code == 201
        (name, muted), = await read_events(lines, 1)
        assert (name, muted["change"], muted["silenced"]) == ("alert", "muted", True)
        assert api.stream.clients == 1
    samples = api.metrics.render().decode()
    assert "ioc_sse_events_total{event=\"alert\"} 2.0" in samples
    assert "ioc_alerts{state=\"firing\"} 1.0" in samples


async def test_a_slow_stream_client_is_cut_off_and_counted() -> None:
    stream = Broadcaster(queue_max=3, heartbeat=60)
    frames = stream.frames()
    assert (await frames.__anext__()).startswith(b"retry: 5000")
    reader = asyncio.ensure_future(frames.__anext__())
    await asyncio.sleep(0)
    assert stream.clients == 1
    for index in range(10):  # never read while published: the queue overflows
        stream.publish("alert", {"n": index})
    with pytest.raises(StopAsyncIteration):  # cut off at once: what it had not read is not sent
        await asyncio.wait_for(reader, 5)
    assert stream.clients == 0
    disconnects = {tuple(s.labels.values()): s.value for m in stream.metrics() for s in m.samples
                   if s.name == "ioc_sse_disconnects_total"}
    assert disconnects[("slow",)] == 1


async def test_the_stream_heartbeats_and_ends_when_closed() -> None:
    stream = Broadcaster(heartbeat=0.05)
    frames = stream.frames()
    ping = b'event: ping\ndata: {"every": 0.05}\n\n'
    first = await frames.__anext__()
    assert first.startswith(b"retry: ") and first.endswith(ping)  # a ping at once, then every heartbeat
    assert await asyncio.wait_for(frames.__anext__(), 5) == ping
    stream.close()
    with pytest.raises(StopAsyncIteration):
        while True:
            frame = await asyncio.wait_for(frames.__anext__(), 5)
            assert frame == ping
    assert stream.clients == 0


# --- restart -------------------------------------------------------------------------------------------

async def test_a_restart_from_the_same_file_keeps_everything_and_renotifies_nothing(db: Path) -> None:
    async with running_api(db) as api:
        alert = api.manager.apply(update("firing", entity="BTN0123"))
        pending = api.manager.apply(update("pending", entity="BTN0456"))
        assert alert and pending
        async with api.client() as client:
            acked = await client.post(f"/api/v1/alerts/{alert.id}/ack", headers=auth(OPERATOR))
            assert acked.status_code == 200
            created = await client.post("/api/v1/silences", headers=auth(OPERATOR), json={
                "matchers": [{"name": "entity", "value": "BTN0456"}], "duration": "1h"})
            silence_id = created.json()["id"]
            before = (await client.get("/api/v1/alerts")).json()
    async with running_api(db) as api:
        async with api.client() as client:
            after = (await client.get("/api/v1/alerts")).json()
            silences = (await client.get("/api/v1/silences")).json()
        assert sorted(after, key=lambda a: a["id"]) == sorted(before, key=lambda a: a["id"])
        by_id = {item["id"]: item for item in after}
        assert by_id[alert.id]["acknowledged"]["by"] == "truc-ban-1"
        assert by_id[pending.id]["silenced"] is True
        assert [(s["id"], s["status"]) for s in silences] == [(silence_id, "active")]
        # The restarted rule engine reports the same states: no change, nothing notified.
        assert api.manager.apply(update("firing", entity="BTN0123")) is None
        assert api.manager.apply(update("pending", entity="BTN0456")) is None
        assert api.recorder.got == []
        # And the next real change still goes out.
        resolved = api.manager.apply(update("resolved", entity="BTN0123"))
        assert resolved is not None and [c for _, c in api.recorder.got] == ["resolved"]


async def test_the_operator_routes_are_documented(api: Api) -> None:
    async with api.client() as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/api/v1/alerts", "/api/v1/alerts/{alert_id}", "/api/v1/alerts/{alert_id}/ack",
            "/api/v1/alerts/{alert_id}/unack", "/api/v1/silences", "/api/v1/silences/{silence_id}",
            "/api/v1/kpis", "/api/v1/stream"} <= set(paths)
    body = paths["/api/v1/silences"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) >= {"matchers", "starts_at", "ends_at", "comment", "author"}
    assert body["properties"]["matchers"]["items"]["properties"]["op"]["enum"] == ["=", "!=", "=~", "!~"]
