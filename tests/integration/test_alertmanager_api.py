"""Alertmanager's API v2 on the daemon (CONTRACT §9): its shapes (Alertmanager's OpenAPI spec), filters,
one set of silences behind both APIs, the operator token for changes. A real uvicorn server on a loopback
port, an httpx client; `amtool` itself is in tests/e2e/test_amtool.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import yaml
from ioc.rules.updates import AlertUpdate

from ioc.alerts.config import AlertsSettings
from ioc.alerts.manager import AlertManager
from ioc.alerts.store import AlertStore
from ioc.api import create_app, serve
from ioc.ingest.dedup import DedupIndex
from ioc.ingest.pipeline import Pipeline
from ioc.metrics import Metrics
from tests.integration.test_alerts_api import OPERATOR, VENDOR, auth, settings_for
from tests.servers import free_port

INHIBIT = AlertsSettings.model_validate({"inhibit": [{
    "source_matchers": ["rule = coverage-outage"], "target_matchers": ["rule = cell-down"], "equal": ["area"]}]})
GETTABLE_ALERT_KEYS = {"labels", "annotations", "startsAt", "endsAt", "updatedAt", "fingerprint", "receivers",
                       "status"}
GETTABLE_SILENCE_KEYS = {"id", "status", "updatedAt", "comment", "createdBy", "startsAt", "endsAt", "matchers"}


@dataclass
class Api:
    url: str
    manager: AlertManager

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10)


@contextlib.asynccontextmanager
async def running_api(db: str) -> AsyncIterator[Api]:
    port = free_port()
    settings = settings_for(port)
    settings.alerts = INHIBIT
    pipeline = Pipeline(sinks=[], dedup=DedupIndex(None, window=86400, max_keys=1000),
                        max_bytes=settings.http.max_body, max_future=300)
    manager = AlertManager(AlertStore(db), settings=INHIBIT)
    app = create_app(settings=settings, pipeline=pipeline, metrics=Metrics(), readiness=list, alerts=manager)
    started = asyncio.Event()
    task = asyncio.create_task(serve(app, settings.http, started=started))
    try:
        await asyncio.wait_for(started.wait(), 10)
        yield Api(f"http://127.0.0.1:{port}", manager)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        manager.close()


@pytest.fixture
async def api(store_url: str) -> AsyncIterator[Api]:  # every test here on SQLite and on PostgreSQL
    async with running_api(store_url) as running:
        yield running


def fire(manager: AlertManager, rule: str, *, state: str = "firing", severity: str = "warning",
         area: str = "22723", **labels: str) -> Any:
    return manager.apply(AlertUpdate(rule=rule, labels={"area": area, **labels}, severity=severity,  # type: ignore[arg-type]
                                     state=state, summary=f"{rule} tại {area}", value=3.0,  # type: ignore[arg-type]
                                     at=time.time() - 60, runbook="https://wiki.example.vn/runbook"))


def when(text: str) -> datetime:
    """An Alertmanager time (RFC 3339 with `Z`)."""
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


def iso(offset: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset)).isoformat().replace("+00:00", "Z")


def v2_silence(*matchers: dict[str, Any], ends: float = 3600, **extra: Any) -> dict[str, Any]:
    return {"matchers": list(matchers), "startsAt": iso(0), "endsAt": iso(ends), "createdBy": "amtool",
            "comment": "bảo trì", **extra}


# --- alerts --------------------------------------------------------------------------------------------

async def test_firing_alerts_are_listed_in_alertmanagers_shape(api: Api) -> None:
    alert = fire(api.manager, "cell-down", entity="BTN0123")
    fire(api.manager, "aqi-bad", state="pending")  # an Alertmanager holds no pending alert
    async with api.client() as client:
        answer = await client.get("/api/v2/alerts")
    assert answer.status_code == 200
    [listed] = answer.json()
    assert GETTABLE_ALERT_KEYS <= set(listed)
    assert listed["labels"] == {"alertname": "cell-down", "severity": "warning", "area": "22723",
                                "entity": "BTN0123"}
    assert listed["annotations"]["summary"] == "cell-down tại 22723"
    assert listed["annotations"]["runbook_url"] == "https://wiki.example.vn/runbook"
    assert listed["fingerprint"] == alert.fingerprint
    assert listed["receivers"] == [{"name": "ioc"}]
    assert listed["status"] == {"state": "active", "silencedBy": [], "inhibitedBy": [], "mutedBy": []}
    now = datetime.now(UTC)
    assert when(listed["startsAt"]) <= now < when(listed["endsAt"])  # firing: it ends in the future
    assert when(listed["updatedAt"]) <= now + timedelta(seconds=1)


async def test_filters_and_the_state_flags_select_as_alertmanager_does(api: Api) -> None:
    fire(api.manager, "cell-down", entity="BTN0123")
    fire(api.manager, "aqi-bad", severity="critical", area="22724")
    async with api.client() as client:
        async def names(*filters: str, **flags: str) -> list[str]:
            params: list[tuple[str, str]] = [("filter", f) for f in filters] + list(flags.items())
            answer = await client.get("/api/v2/alerts", params=params)
            assert answer.status_code == 200, answer.text
            return sorted(alert["labels"]["alertname"] for alert in answer.json())

        assert await names() == ["aqi-bad", "cell-down"]
        assert await names('alertname="cell-down"') == ["cell-down"]
        assert await names('severity=~"c.*"') == ["aqi-bad"]
        assert await names("area!=22724", 'alertname=~"cell.*|aqi.*"') == ["cell-down"]
        assert await names(active="false") == []
        assert await names(receiver="io.*") == ["aqi-bad", "cell-down"]
        assert await names(receiver="email") == []
        bad = await client.get("/api/v2/alerts", params={"filter": "alertname=~(a+"})
        assert bad.status_code == 400 and "filter" in bad.json()  # Alertmanager's shape: a JSON string


async def test_silenced_and_inhibited_alerts_are_suppressed_with_who_mutes_them(api: Api) -> None:
    source = fire(api.manager, "coverage-outage", severity="critical")
    fire(api.manager, "cell-down", entity="BTN0123")  # inhibited by the outage of its area
    aqi = fire(api.manager, "aqi-bad", area="22724")
    async with api.client() as client:
        made = await client.post("/api/v2/silences", headers=auth(OPERATOR), json=v2_silence(
            {"name": "alertname", "value": "aqi-bad", "isRegex": False, "isEqual": True}))
        assert made.status_code == 200, made.text
        silence_id = made.json()["silenceID"]
        listed = {a["labels"]["alertname"]: a["status"] for a in (await client.get("/api/v2/alerts")).json()}
        assert listed["coverage-outage"]["state"] == "active"
        assert listed["cell-down"] == {"state": "suppressed", "silencedBy": [],
                                       "inhibitedBy": [source.fingerprint], "mutedBy": []}
        assert listed["aqi-bad"] == {"state": "suppressed", "silencedBy": [silence_id], "inhibitedBy": [],
                                     "mutedBy": []}
        # amtool's default query: active only
        quiet = await client.get("/api/v2/alerts", params={"silenced": "false", "inhibited": "false"})
        assert [a["labels"]["alertname"] for a in quiet.json()] == ["coverage-outage"]
        silenced = await client.get("/api/v2/alerts", params={"active": "false", "inhibited": "false"})
        assert [a["fingerprint"] for a in silenced.json()] == [aqi.fingerprint]
        groups = (await client.get("/api/v2/alerts/groups")).json()
    assert [group["labels"] for group in groups] == [{"alertname": name} for name in
                                                     ("aqi-bad", "cell-down", "coverage-outage")]
    assert all(group["receiver"] == {"name": "ioc"} and len(group["alerts"]) == 1 for group in groups)
    assert groups[1]["alerts"][0]["status"]["inhibitedBy"] == [source.fingerprint]


# --- silences: one set behind both APIs ------------------------------------------------------------------

async def test_a_silence_made_through_either_api_is_the_same_silence(api: Api) -> None:
    async with api.client() as client:
        v1 = await client.post("/api/v1/silences", headers=auth(OPERATOR), json={
            "matchers": [{"name": "area", "value": "227.*", "op": "=~"}, {"name": "rule", "value": "x", "op": "!="}],
            "duration": "2h", "comment": "từ v1"})
        assert v1.status_code == 201
        v1_id = v1.json()["id"]
        v2 = await client.post("/api/v2/silences", headers=auth(OPERATOR), json=v2_silence(
            {"name": "alertname", "value": "cell-.*", "isRegex": True, "isEqual": False},
            {"name": "area", "value": "22723", "isRegex": False}))
        v2_id = v2.json()["silenceID"]

        from_v2 = {s["id"]: s for s in (await client.get("/api/v2/silences")).json()}
        from_v1 = {s["id"]: s for s in (await client.get("/api/v1/silences")).json()}
        assert set(from_v2) == set(from_v1) == {v1_id, v2_id}
        made_in_v1 = from_v2[v1_id]
        assert GETTABLE_SILENCE_KEYS <= set(made_in_v1)
        assert made_in_v1["matchers"] == [{"name": "area", "value": "227.*", "isRegex": True, "isEqual": True},
                                          {"name": "rule", "value": "x", "isRegex": False, "isEqual": False}]
        assert made_in_v1["status"] == {"state": "active"} and made_in_v1["createdBy"] == "truc-ban-1"
        assert made_in_v1["comment"] == "từ v1"
        assert from_v1[v2_id]["matchers"] == [{"name": "alertname", "value": "cell-.*", "op": "!~"},
                                              {"name": "area", "value": "22723", "op": "="}]
        assert from_v1[v2_id]["author"] == "amtool"

        one = await client.get(f"/api/v2/silence/{v1_id}")
        assert one.status_code == 200 and one.json() == made_in_v1
        missing = await client.get("/api/v2/silence/no-such-id")
        assert missing.status_code == 404 and "no-such-id" in missing.json()
        filtered = await client.get("/api/v2/silences", params={"filter": 'area=~"227.*"'})
        assert [s["id"] for s in filtered.json()] == [v1_id]

        expired = await client.delete(f"/api/v2/silence/{v1_id}", headers=auth(OPERATOR))
        assert expired.status_code == 200
        assert (await client.get(f"/api/v1/silences/{v1_id}")).json()["status"] == "expired"
        assert (await client.get(f"/api/v2/silence/{v1_id}")).json()["status"] == {"state": "expired"}
        listed = [s["id"] for s in (await client.get("/api/v2/silences")).json()]
        assert listed == [v2_id, v1_id]  # active first, then expired
        assert (await client.delete("/api/v2/silence/no-such-id", headers=auth(OPERATOR))).status_code == 404


async def test_a_post_with_an_existing_id_updates_the_silence(api: Api) -> None:
    matcher = {"name": "area", "value": "22723", "isRegex": False, "isEqual": True}
    async with api.client() as client:
        first = (await client.post("/api/v2/silences", headers=auth(OPERATOR), json=v2_silence(matcher))).json()
        made = (await client.get(f"/api/v2/silence/{first['silenceID']}")).json()
        longer = {**v2_silence(matcher, comment="dài hơn"), "id": made["id"], "startsAt": made["startsAt"],
                  "endsAt": iso(7200)}
        updated = await client.post("/api/v2/silences", headers=auth(OPERATOR), json=longer)
        assert updated.status_code == 200 and updated.json() == {"silenceID": made["id"]}
        now = (await client.get(f"/api/v2/silence/{made['id']}")).json()
        assert now["comment"] == "dài hơn" and when(now["endsAt"]) > when(made["endsAt"])

        other = {**v2_silence({**matcher, "value": "22724"}), "id": made["id"]}  # new matchers: replaced
        replaced = (await client.post("/api/v2/silences", headers=auth(OPERATOR), json=other)).json()
        assert replaced["silenceID"] != made["id"]
        assert (await client.get(f"/api/v2/silence/{made['id']}")).json()["status"]["state"] == "expired"

        unknown = await client.post("/api/v2/silences", headers=auth(OPERATOR),
                                    json={**v2_silence(matcher), "id": "no-such-id"})
        assert unknown.status_code == 404


async def test_changes_need_an_operator_token_and_bad_silences_are_named(api: Api) -> None:
    body = v2_silence({"name": "area", "value": "22723", "isRegex": False})
    async with api.client() as client:
        unauthorized = await client.post("/api/v2/silences", json=body)
        assert unauthorized.status_code == 401 and "token" in unauthorized.json()["error"]  # the daemon's shape
        assert (await client.post("/api/v2/silences", headers=auth("wrong"), json=body)).status_code == 401
        assert (await client.post("/api/v2/silences", headers=auth(VENDOR), json=body)).status_code == 403
        made = (await client.post("/api/v2/silences", headers=auth(OPERATOR), json=body)).json()["silenceID"]
        assert (await client.delete(f"/api/v2/silence/{made}")).status_code == 401
        assert (await client.get(f"/api/v2/silence/{made}")).json()["status"]["state"] == "active"

        for bad, named in [
            ({**body, "matchers": []}, "matchers"),
            ({**body, "endsAt": iso(-60)}, "ends_at"),
            ({**body, "matchers": [{"name": "area", "value": "(a+", "isRegex": True}]}, "value"),
            ({**body, "matchers": [{"name": "area", "value": ".*", "isRegex": True}]}, "every alert"),
            ({k: v for k, v in body.items() if k != "endsAt"}, "endsAt"),
        ]:
            answer = await client.post("/api/v2/silences", headers=auth(OPERATOR), json=bad)
            assert answer.status_code == 400, (bad, answer.text)
            assert named in answer.json(), answer.text  # a JSON string, as Alertmanager answers
        audit = [(entry.actor, entry.action) for entry in api.manager.audit_log(target=made)]
        assert audit == [("truc-ban-1", "silence.create")]


# --- status --------------------------------------------------------------------------------------------

async def test_status_says_clustering_is_disabled_and_shows_the_routing_as_yaml(api: Api) -> None:
    async with api.client() as client:
        status = (await client.get("/api/v2/status")).json()
        receivers = (await client.get("/api/v2/receivers")).json()
    assert status["cluster"] == {"status": "disabled", "peers": []}
    assert status["versionInfo"]["version"] == "0.25.0"  # the Alertmanager API followed: clients pick by it
    assert status["versionInfo"]["revision"].startswith("ioc ")
    assert when(status["uptime"]) <= datetime.now(UTC)
    config = yaml.safe_load(status["config"]["original"])
    assert config["route"] == {"receiver": "ioc", "group_by": ["alertname"]}
    assert config["inhibit_rules"] == [{"source_matchers": ['rule="coverage-outage"'],
                                        "target_matchers": ['rule="cell-down"'], "equal": ["area"]}]
    assert receivers == [{"name": "ioc"}]
