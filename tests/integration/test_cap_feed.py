"""The CAP feed end to end in one process with real parts: a `public: true` rule in the real rule engine
fires and resolves on events, the real alert manager tells the CAP publisher, and a real uvicorn server
answers `GET /api/v1/cap` (Atom) and `GET /api/v1/cap/{identifier}.xml` with messages valid against the
OASIS CAP 1.2 schema; the feed is still there after a restart (same store file); a rule that is not
public publishes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
import xmlschema
from ioc.rules.engine import RuleEngine
from ioc.rules.loader import parse_rules
from ioc.rules.updates import AlertUpdate

from ioc import failpoints
from ioc.alerts.manager import AlertManager
from ioc.alerts.store import AlertStore
from ioc.api import create_app, serve
from ioc.areas import AreaRegistry
from ioc.cap.api import cap_router
from ioc.cap.config import CapSettings
from ioc.cap.message import CAP_NS
from ioc.cap.publisher import CapPublisher
from ioc.cap.store import CapStore
from ioc.config import Settings
from ioc.envelope import EVENT_ADAPTER
from ioc.ingest.dedup import DedupIndex
from ioc.ingest.pipeline import Pipeline
from ioc.metrics import Metrics
from tests.e2e.cluster_world import World, running_cluster
from tests.e2e.daemon import VENDOR_TOKEN, DaemonProcess, make_daemon
from tests.servers import free_port
from tests.waiting import wait_until

ATOM = "http://www.w3.org/2005/Atom"
NS = {"atom": ATOM, "cap": CAP_NS}
VN = timezone(timedelta(hours=7))
START = datetime(2026, 3, 2, 8, 0, tzinfo=VN)

RULES = parse_rules("""\
rules:
  - id: aqi-bad
    kind: threshold
    severity: critical
    match: {type: telemetry, metric: env.aqi}
    group_by: [area]
    op: ">="
    threshold: 151
    clear: 120
    summary: "Chất lượng không khí xấu tại {{ area_name }}: VN_AQI {{ value }}"
    public: true
    cap: {event: Không khí xấu, event_en: Bad air, summary_en: "Bad air in {{ area_name }}: {{ value }}"}
  - id: aqi-internal
    kind: threshold
    severity: warning
    match: {type: telemetry, metric: env.pm25}
    group_by: [area]
    op: ">="
    threshold: 50
    summary: "PM2.5 {{ value }}"
""")


@dataclass
class Feed:
    url: str
    engine: RuleEngine
    areas: AreaRegistry

    def reading(self, n: int, minutes: float, value: float, area: str, metric: str = "env.aqi") -> None:
        self.engine.observe(EVENT_ADAPTER.validate_python({
            "id": f"e{n}", "source": "qtmt-aqi", "type": "telemetry", "metric": metric, "value": value,
            "area": area, "time": START + timedelta(minutes=minutes)}))

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            return await client.get(path)


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(resources.files("ioc.data").joinpath("cap/CAP-v1.2.xsd")))


@pytest.fixture(scope="module")
def areas() -> AreaRegistry:
    return AreaRegistry.default()


@contextlib.asynccontextmanager
async def running(db: Path, areas: AreaRegistry) -> AsyncIterator[Feed]:
    port = free_port()
    settings = Settings.model_validate({"http": {"listen": f"127.0.0.1:{port}"},
                                        "cap": {"sender": "ioc.lamdong.gov.vn", "keep": 100}})
    publisher = CapPublisher(CapStore(db, keep=settings.cap.keep), rules=RULES.get, settings=settings.cap,
                             areas=areas, default_area="68")
    manager = AlertManager(AlertStore(db), notifiers=[publisher])
    engine = RuleEngine(RULES, areas=areas, on_change=manager.apply, started_at=START.timestamp())
    pipeline = Pipeline(sinks=[], dedup=DedupIndex(None, window=60, max_keys=10), max_bytes=1 << 20,
                        max_future=300)
    app = create_app(settings=settings, pipeline=pipeline, metrics=Metrics(), readiness=list, alerts=manager,
                     cap=cap_router(publisher.store, settings.cap))
    started = asyncio.Event()
    task = asyncio.create_task(serve(app, settings.http, started=started))
    try:
        await asyncio.wait_for(started.wait(), 10)
        yield Feed(f"http://127.0.0.1:{port}", engine, areas)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        manager.close()
        publisher.store.close()


def entries(feed: bytes) -> list[ET.Element]:
    root = ET.fromstring(feed)
    assert root.tag == f"{{{ATOM}}}feed"
    for name in ("id", "title", "updated"):
        assert root.find(f"atom:{name}", NS) is not None, name
    return root.findall("atom:entry", NS)


def cap_of(entry: ET.Element) -> ET.Element:
    content = entry.find("atom:content", NS)
    assert content is not None and content.get("type") == "application/cap+xml"
    (alert,) = list(content)
    assert alert.tag == f"{{{CAP_NS}}}alert"
    return alert


def field(element: ET.Element, path: str) -> Any:
    found = element.find(path, NS)
    return None if found is None else found.text


async def test_a_public_rule_fires_and_resolves_into_a_valid_feed(tmp_path: Path, areas: AreaRegistry,
                                                                  schema: xmlschema.XMLSchema) -> None:
    commune = next(unit for unit in areas.children("68") if unit.lat is not None)
    async with running(tmp_path / "ioc.db", areas) as feed:
        empty = await feed.get("/api/v1/cap")
        assert empty.status_code == 200 and empty.headers["content-type"].startswith("application/atom+xml")
        assert entries(empty.content) == []
        feed.reading(1, 0, 180.0, commune.code)  # fires at once (no `for`)
        feed.reading(2, 1, 90.0, commune.code, metric="env.pm25")  # the internal rule fires too
        answer = await feed.get("/api/v1/cap")
        (entry,) = entries(answer.content)
        alert = cap_of(entry)
        assert field(alert, "cap:msgType") == "Alert"
        assert field(alert, "cap:info/cap:headline") == (
            f"Chất lượng không khí xấu tại {commune.name}: VN_AQI 180")
        assert [e.text for e in alert.findall("cap:info/cap:language", NS)] == ["vi-VN", "en-US"]
        assert field(alert, "cap:info/cap:area/cap:geocode/cap:value") == commune.code
        assert field(alert, "cap:info/cap:area/cap:circle").startswith(f"{commune.lat:.5f},{commune.lon:.5f} ")
        assert field(entry, "atom:title") == field(alert, "cap:info/cap:headline")
        first_id = field(alert, "cap:identifier")

        feed.reading(3, 2, 100.0, commune.code)  # below `clear`: resolves
        answer = await feed.get("/api/v1/cap")
        cancel_entry, alert_entry = entries(answer.content)  # newest first
        cancel = cap_of(cancel_entry)
        assert field(cancel, "cap:msgType") == "Cancel"
        assert field(cancel, "cap:references").split(",")[1] == first_id
        assert field(cancel, "cap:incidents") == field(alert, "cap:incidents")
        for each in (cancel_entry, alert_entry):
            link = each.find("atom:link[@rel='alternate']", NS)
            assert link is not None and link.get("type") == "application/cap+xml"
            single = await feed.get(httpx.URL(link.get("href", "")).path)
            assert single.status_code == 200 and single.headers["content-type"].startswith("application/cap+xml")
            schema.validate(single.text)  # each message valid against the OASIS schema...
            assert ET.fromstring(single.content).find("cap:identifier", NS).text == field(  # type: ignore[union-attr]
                cap_of(each), "cap:identifier")
        inline = ET.tostring(cancel, encoding="unicode")
        schema.validate(inline)  # ...and as it sits in the feed
        missing = await feed.get("/api/v1/cap/nothing.xml")
        assert missing.status_code == 404 and "error" in missing.json()

    # A restart on the same store: the feed is kept.
    async with running(tmp_path / "ioc.db", areas) as feed:
        assert len(entries((await feed.get("/api/v1/cap")).content)) == 2


async def test_the_feed_is_in_the_openapi_document(tmp_path: Path, areas: AreaRegistry) -> None:
    async with running(tmp_path / "ioc.db", areas) as feed:
        paths = (await feed.get("/openapi.json")).json()["paths"]
    assert {"/api/v1/cap", "/api/v1/cap/{identifier}.xml"} <= set(paths)


def test_the_settings_default_the_feed(tmp_path: Path) -> None:
    assert CapSettings().url is None
    assert CapSettings(url="https://ioc.example.vn").url == "https://ioc.example.vn/"


def test_a_crash_before_the_message_is_kept_publishes_it_at_the_next_start(tmp_path: Path,
                                                                           areas: AreaRegistry) -> None:
    """CAP goes through the alert outbox: the change and its outbox row are one transaction, so a message
    not yet kept when the process died (failpoint `alerts.before_notify`: the change is stored, nobody
    is told) is published when the next one starts, and once."""
    db = tmp_path / "ioc.db"
    commune = next(unit for unit in areas.children("68") if unit.lat is not None)

    def publisher() -> CapPublisher:
        return CapPublisher(CapStore(db), rules=RULES.get, areas=areas, default_area="68")

    before = publisher()
    manager = AlertManager(AlertStore(db), notifiers=[before])
    failpoints.configure("alerts.before_notify=error")
    try:
        alert = manager.apply(AlertUpdate(rule="aqi-bad", labels={"area": commune.code}, severity="critical",
                                          state="firing", summary="Chất lượng không khí xấu", value=180.0,
                                          at=START.timestamp()))
    finally:
        failpoints.configure("")
    assert alert is not None and before.store.latest() == []  # the process "dies" here
    after = publisher()
    restarted = AlertManager(AlertStore(db), notifiers=[after])  # resumes: the outbox is delivered
    (message,) = after.store.latest()
    assert (message.msg_type, message.alert_id) == ("Alert", alert.id)
    restarted.close()
    again = AlertManager(AlertStore(db), notifiers=[publisher()])  # delivered and settled: not again
    again.close()
    assert len(after.store.latest()) == 1


DAEMON_RULES = """\
rules:
  - id: aqi-bad
    kind: threshold
    severity: critical
    match: {type: telemetry, metric: env.aqi}
    group_by: [area]
    op: ">="
    threshold: 151
    clear: 120
    summary: "Chất lượng không khí xấu tại {{ area_name }}: VN_AQI {{ value }}"
    public: true
"""


@pytest.fixture(params=["one", "two"])
def world(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Any, influxdb: Any, database: str,
          unique: str) -> Iterator[World]:
    """`ioc run` with DAEMON_RULES, or two nodes on one PostgreSQL (tests/e2e/cluster_world.py)."""
    extra = '\n[cap]\nsender = "ioc.test"\n'
    if request.param == "two":
        (tmp_path / "cluster").mkdir()
        yield from running_cluster(tmp_path / "cluster", mosquitto, influxdb, request.getfixturevalue("postgres"),
                                   rules=DAEMON_RULES, extra=extra)
        return
    daemon = make_daemon(tmp_path, mqtt_url=mosquitto.url, influx_url=influxdb.url, database=database,
                         client_id=f"ioc-cap-{unique}", rules=DAEMON_RULES, extra=extra)
    daemon.start()
    yield World((daemon,), database)
    daemon.stop()


def test_the_daemon_publishes_its_public_rules_on_the_feed(world: World, unique: str,
                                                          schema: xmlschema.XMLSchema) -> None:
    """`ioc run` wires it: events over HTTP fire and resolve a public rule; its feed holds the Alert and
    the Cancel, valid CAP, and keeps them across a restart of the daemon. On two nodes the events are posted
    to the follower, every node's feed holds both (the follower's from what it hears from the store), and
    the follower keeps them across its restart."""
    daemon = world.writer
    commune = next(a for a in httpx.get(f"{daemon.api}/api/v1/areas", timeout=10).json()
                   if a["level"] == "commune")

    def post(n: int, value: float) -> None:
        event = {"id": f"{unique}-{n}", "source": "qtmt-aqi", "type": "telemetry", "metric": "env.aqi",
                 "value": value, "area": commune["code"],
                 "time": (datetime.now(VN) + timedelta(seconds=n)).isoformat()}
        answer = httpx.post(f"{daemon.api}/api/v1/events", json=event, timeout=10,
                            headers={"Authorization": f"Bearer {VENDOR_TOKEN}"})
        assert answer.status_code == 202 and answer.json()["accepted"] == 1, answer.text

    def feed_entries(node: DaemonProcess, count: int) -> list[ET.Element]:
        def enough() -> list[ET.Element] | None:
            found = entries(httpx.get(f"{node.api}/api/v1/cap", timeout=10).content)
            return found if len(found) >= count else None

        return wait_until(f"{count} entries in the feed of {node.api}", enough, 30)

    post(1, 180.0)
    for node in world.nodes:
        assert field(cap_of(feed_entries(node, 1)[0]), "cap:msgType") == "Alert"
    post(2, 100.0)
    for node in world.nodes:
        cancel, alert = (cap_of(each) for each in feed_entries(node, 2))
        assert [field(alert, "cap:msgType"), field(cancel, "cap:msgType")] == ["Alert", "Cancel"]
        for message in (alert, cancel):
            schema.validate(ET.tostring(message, encoding="unicode"))
            assert field(message, "cap:sender") == "ioc.test"
            assert field(message, "cap:info/cap:area/cap:geocode/cap:value") == commune["code"]
            assert field(message, "cap:info/cap:area/cap:areaDesc").startswith(commune["name"])
    assert daemon.terminate() == 0
    daemon.start()
    assert len(entries(httpx.get(f"{daemon.api}/api/v1/cap", timeout=10).content)) == 2
