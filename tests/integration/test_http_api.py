"""The HTTP API (docs/http-api.md) through a real uvicorn server on a loopback port, with an httpx client.

The pipeline has no sinks (its `on_durable` runs at once) unless a test gives it a test-double sink to
exercise back-pressure (503) and the wait for durability.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ioc.api import HttpServer, create_app, serve
from ioc.config import HttpSettings, Settings, load_settings, token_sha256
from ioc.envelope import AnyEvent
from ioc.errors import IocError
from ioc.ingest.dedup import DedupIndex
from ioc.ingest.pipeline import Pipeline
from ioc.metrics import Metrics, MetricSource
from tests.evaluation_tap import EventTap
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
QTMT, VIETTEL, SLOW, OPERATOR = "token-qtmt", "token-viettel", "token-slow", "token-operator"
MAX_BODY = 4096


def settings_for(port: int, **http: Any) -> Settings:
    return Settings.model_validate({
        "http": {"listen": f"127.0.0.1:{port}", "max_body": MAX_BODY, "durable_wait": "2s", **http},
        "vendors": [
            {"name": "qtmt", "token_sha256": token_sha256(QTMT), "sources": ["qtmt-aqi", "qtmt-water"],
             "rate": 100000},
            {"name": "viettel", "token_sha256": token_sha256(VIETTEL), "sources": ["viettel-ran"]},
            {"name": "slow", "token_sha256": token_sha256(SLOW), "sources": ["slow-src"], "rate": 2},
        ],
        "operators": [{"name": "truc-ban-1", "token_sha256": token_sha256(OPERATOR)}],
    })


def telemetry(event_id: str, source: str = "qtmt-aqi", **fields: Any) -> dict[str, Any]:
    return {"id": event_id, "source": source, "type": "telemetry",
            "time": datetime.now(UTC).isoformat(), "area": "22723", "metric": "env.aqi",
            "value": 120.5, **fields}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class SlowSink:
    """A test-double sink: durable after `delay` seconds (never when None); full when `room` is False."""

    name = "slow"

    def __init__(self, delay: float | None, room: bool = True) -> None:
        self.delay = delay
        self.room = room
        self.points: list[str] = []

    def start(self) -> None: ...

    def submit(self, points: list[str], on_durable: Callable[[], None] | None = None, *,
               timeout: float | None = None) -> None:
        self.points.extend(points)
        if on_durable is not None and self.delay is not None:
            timer = threading.Timer(self.delay, on_durable)
            timer.daemon = True
            timer.start()

    def has_room(self, points: int) -> bool:
        return self.room

    def problems(self) -> list[str]:
        return []

    def metrics(self) -> MetricSource:
        return list

    def close(self, timeout: float) -> None: ...


@dataclass
class Api:
    url: str
    pipeline: Pipeline
    metrics: Metrics
    problems: list[str]
    events: list[AnyEvent] = field(default_factory=list)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10)

    async def post(self, body: Any, token: str = QTMT, content_type: str = "application/json",
                   **headers: str) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        async with self.client() as client:
            return await client.post("/api/v1/events", content=content,
                                     headers={**auth(token), "Content-Type": content_type, **headers})

    async def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with self.client() as client:
            response = await client.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        found = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found


@contextlib.asynccontextmanager
async def running_api(*, sinks: list[SlowSink] | None = None, **http: Any) -> AsyncIterator[Api]:
    """The API on a free port through `serve()`, stopped by cancellation when the test ends."""
    port = free_port()
    settings = settings_for(port, **http)
    pipeline = Pipeline(sinks=list(sinks or []), dedup=DedupIndex(None, window=86400, max_keys=10**6),
                        max_bytes=settings.http.max_body, max_future=300)
    metrics = Metrics()
    metrics.add(pipeline.metrics)
    problems: list[str] = []
    api = Api(f"http://127.0.0.1:{port}", pipeline, metrics, problems)
    pipeline.evaluation = EventTap(api.events.append)
    app = create_app(settings=settings, pipeline=pipeline, metrics=metrics, readiness=lambda: list(problems))
    started = asyncio.Event()
    task = asyncio.create_task(serve(app, settings.http, started=started))
    try:
        await asyncio.wait_for(started.wait(), 10)
        yield api
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with running_api() as running:
        yield running


# --- authentication and authorisation -------------------------------------------------------------------

async def test_401_without_a_token_or_with_a_bad_one(api: Api) -> None:
    async with api.client() as client:
        response = await client.post("/api/v1/events", content=orjson.dumps(telemetry("a")))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "missing bearer token" in response.json()["error"]
    response = await api.post(telemetry("a"), token="not-a-token")
    assert response.status_code == 401 and set(response.json()) == {"error"}
    response = await api.post(telemetry("a"), token=OPERATOR)
    assert response.status_code == 403 and "needs a vendor token" in response.json()["error"]
    assert not api.pipeline.received


async def test_403_for_another_vendors_source_admits_nothing_of_the_request(api: Api) -> None:
    body = [telemetry("ok-1"), telemetry("theirs", source="viettel-ran"), telemetry("bad", value="12")]
    response = await api.post(body)
    assert response.status_code == 403
    assert response.json() == {"error": "vendor 'qtmt' may not send for source 'viettel-ran'"}
    assert not api.pipeline.received and not api.pipeline.accepted and not api.pipeline.rejected
    assert api.events == []
    # The same event is fine from its own vendor.
    response = await api.post(telemetry("theirs", source="viettel-ran"), token=VIETTEL)
    assert response.status_code == 202 and response.json()["accepted"] == 1


async def test_a_rejected_item_claiming_another_source_is_counted_under_the_vendors_own(api: Api) -> None:
    response = await api.post([telemetry("x", source="viettel-ran", value="12")])
    assert response.status_code == 202
    assert response.json()["rejected"] == [{"index": 0, "error": "value: expected a number, got a string"}]
    assert dict(api.pipeline.received) == {("qtmt-aqi",): 1}  # not viettel-ran's counters or dead letters


# --- body limits, content types ---------------------------------------------------------------------------

async def test_413_when_content_length_is_over_the_limit(api: Api) -> None:
    body = orjson.dumps([telemetry(f"big-{i}") for i in range(40)])
    assert len(body) > MAX_BODY
    response = await api.post(body)
    assert response.status_code == 413
    assert response.json() == {"error": f"body is {len(body)} bytes, over the limit of {MAX_BODY}"}
    assert not api.pipeline.received


async def _raw_request(api: Api, head: str, body: bytes = b"") -> bytes:
    """Send a request head (and maybe part of a body) on a raw socket; the answer's status line and
    headers, read without ever sending the rest of the body."""
    host, port = api.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.encode() + body)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()


HEAD = (f"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {QTMT}\r\n"
        "Content-Type: application/json\r\n")


async def test_413_is_answered_from_content_length_without_reading_the_body(api: Api) -> None:
    answer = await _raw_request(api, HEAD + "Content-Length: 1000000000\r\n\r\n")  # no body ever sent
    assert answer.startswith(b"HTTP/1.1 413")
    # A client waiting for `100 Continue` learns of the 413 before sending even a small excess.
    answer = await _raw_request(
        api, HEAD + f"Content-Length: {MAX_BODY + 10}\r\nExpect: 100-continue\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413")


async def test_413_for_a_chunked_body_without_waiting_for_its_end(api: Api) -> None:
    chunk = b" " * 1000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10))  # and never the last chunk
    answer = await _raw_request(api, HEAD + "Transfer-Encoding: chunked\r\n\r\n", body)
    assert answer.startswith(b"HTTP/1.1 413")


async def test_413_when_a_chunked_body_grows_over_the_limit(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(6):
            yield b" " * 1000

    async with api.client() as client:
        response = await client.post("/api/v1/events", content=chunks(),
                                     headers={**auth(QTMT), "Content-Type": "application/x-ndjson"})
    assert response.status_code == 413
    assert response.json() == {"error": f"body is 6000 bytes, over the limit of {MAX_BODY}"}
    assert not api.pipeline.received


async def test_a_chunked_body_under_the_limit_is_taken(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            yield orjson.dumps(telemetry(f"chunk-{i}")) + b"\n"

    async with api.client() as client:
        response = await client.post("/api/v1/events", content=chunks(),
                                     headers={**auth(QTMT), "Content-Type": "application/x-ndjson"})
    assert response.status_code == 202 and response.json()["accepted"] == 3


async def test_415_for_an_unsupported_content_type(api: Api) -> None:
    response = await api.post(telemetry("a"), content_type="text/csv")
    assert response.status_code == 415 and "application/x-ndjson" in response.json()["error"]


# --- rate and back-pressure -------------------------------------------------------------------------------

async def test_429_with_retry_after_over_the_vendors_rate(api: Api) -> None:
    ok = await api.post([telemetry("s-1", source="slow-src"), telemetry("s-2", source="slow-src")],
                        token=SLOW)
    assert ok.status_code == 202 and ok.json()["accepted"] == 2
    refused = await api.post(telemetry("s-3", source="slow-src"), token=SLOW)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert "over its rate of 2 events/s" in refused.json()["error"]
    assert api.pipeline.received[("slow-src",)] == 2  # the refused request was not admitted
    # Another vendor is not affected.
    assert (await api.post(telemetry("q-1"))).status_code == 202
    samples = await api.samples()
    assert samples[("ioc_http_rate_limited_total", (("vendor", "slow"),))] == 1
    assert samples[("ioc_http_rate_limited_total", (("vendor", "qtmt"),))] == 0
    assert samples[("ioc_http_requests_total", (("route", "/api/v1/events"), ("status", "429")))] == 1


async def test_503_with_retry_after_when_the_sinks_are_full() -> None:
    async with running_api(sinks=[SlowSink(0.0, room=False)]) as api:
        response = await api.post(telemetry("full"))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "full" in response.json()["error"]
        assert not api.pipeline.received


async def test_202_waits_until_the_points_are_durable() -> None:
    async with running_api(sinks=[SlowSink(0.3)]) as api:
        started = asyncio.get_running_loop().time()
        response = await api.post(telemetry("d-1"))
        assert asyncio.get_running_loop().time() - started >= 0.3
        assert response.status_code == 202 and response.json()["durable"] is True


async def test_202_says_not_durable_after_durable_wait() -> None:
    async with running_api(sinks=[SlowSink(None)], durable_wait="300ms") as api:
        response = await api.post(telemetry("d-1"))
        assert response.status_code == 202
        assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": [], "durable": False}


# --- what is accepted ---------------------------------------------------------------------------------------

async def test_one_object(api: Api) -> None:
    response = await api.post(telemetry("one"))
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": [], "durable": True}
    assert [event.id for event in api.events] == ["one"]


async def test_an_array_with_good_bad_and_repeated_items(api: Api) -> None:
    body = [telemetry("a-1"), telemetry("a-2", value="12"), telemetry("a-3", source="qtmt-water"),
            telemetry("a-1"), {"id": "a-4", "source": "qtmt-aqi", "type": "telemetry"}, 7]
    response = await api.post(body)
    assert response.status_code == 202
    result = response.json()
    assert result["accepted"] == 2 and result["duplicates"] == 1 and result["durable"] is True
    rejected = {item["index"]: item["error"] for item in result["rejected"]}
    assert rejected[1] == "value: expected a number, got a string"
    assert "time: required field missing" in rejected[4]
    assert rejected[5] == "payload: expected a JSON object, got a number"
    assert set(rejected) == {1, 4, 5}


async def test_ndjson_with_a_bad_line(api: Api) -> None:
    lines = [orjson.dumps(telemetry("n-1")), b"{not json", orjson.dumps(telemetry("n-2")), b""]
    response = await api.post(b"\n".join(lines), content_type="application/x-ndjson")
    assert response.status_code == 202
    result = response.json()
    assert result["accepted"] == 2
    [bad] = result["rejected"]
    assert bad["index"] == 1 and bad["error"].startswith("payload: invalid JSON")
    jsonl = await api.post(orjson.dumps(telemetry("n-3")) + b"\n", content_type="application/jsonl")
    assert jsonl.json()["accepted"] == 1


async def test_repeats_across_requests_are_duplicates(api: Api) -> None:
    assert (await api.post([telemetry("r-1"), telemetry("r-2")])).json()["accepted"] == 2
    again = (await api.post([telemetry("r-1"), telemetry("r-2"), telemetry("r-3")])).json()
    assert again == {"accepted": 1, "duplicates": 2, "rejected": [], "durable": True}


@pytest.mark.parametrize("body", [b"", b"   ", b"null", b"[1, 2]", b"\xff\xfe", b"[" * 5000, b'{"a": 1}',
                                  b"[]", b'"text"'])
async def test_bad_bodies_are_never_a_server_error(api: Api, body: bytes) -> None:
    response = await api.post(body)
    assert response.status_code < 500, response.text
    assert response.status_code in (202, 413)
    if response.status_code == 202:
        assert all(set(item) == {"index", "error"} for item in response.json()["rejected"])


async def test_vietnamese_text_survives(api: Api) -> None:
    status = {"id": "s-1", "source": "qtmt-aqi", "type": "status", "time": datetime.now(UTC).isoformat(),
              "entity": "Trạm Phan Thiết", "state": "down", "detail": "mất kết nối, đang khắc phục",
              "tags": {"tỉnh": "Bình Thuận"}}
    response = await api.post([status, telemetry("s-2", tags={"station": "Phan Thiết 1"})])
    assert response.json()["accepted"] == 2
    by_id = {event.id: event for event in api.events}
    assert by_id["s-1"].entity == "Trạm Phan Thiết"  # type: ignore[union-attr]
    assert by_id["s-1"].detail == "mất kết nối, đang khắc phục"  # type: ignore[union-attr]
    assert by_id["s-1"].tags == {"tỉnh": "Bình Thuận"}
    assert by_id["s-2"].tags == {"station": "Phan Thiết 1"}


# --- health, readiness, metrics, docs, errors ---------------------------------------------------------------

async def test_healthz_and_readyz(api: Api) -> None:
    async with api.client() as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}
        api.problems.append("mqtt: not connected to 127.0.0.1:1883")
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "not ready", "problems": ["mqtt: not connected to 127.0.0.1:1883"]}


async def test_metrics_obey_the_counting_rule(api: Api) -> None:
    await api.post([telemetry("m-1"), telemetry("m-2", value="12"), telemetry("m-1"),
                    telemetry("m-3", source="qtmt-water")])
    await api.post(b"{broken")
    samples = await api.samples()

    def total(name: str, source: str) -> float:
        return sum(value for (sample, labels), value in samples.items()
                   if sample == name and ("source", source) in labels)

    sources = {dict(labels)["source"] for (name, labels) in samples if name == "ioc_events_received_total"}
    assert sources == {"qtmt-aqi", "qtmt-water"}
    for source in sources:
        assert total("ioc_events_received_total", source) == (
            total("ioc_events_accepted_total", source) + total("ioc_events_rejected_total", source)
            + total("ioc_events_duplicate_total", source)), source
    assert total("ioc_events_received_total", "qtmt-aqi") == 4
    assert samples[("ioc_http_requests_total", (("route", "/api/v1/events"), ("status", "202")))] == 2


async def test_openapi_documents_the_events_route(api: Api) -> None:
    async with api.client() as client:
        spec = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    assert spec["info"]["title"] and spec["info"]["version"]
    post = spec["paths"]["/api/v1/events"]["post"]
    content = post["requestBody"]["content"]
    assert set(content) == {"application/json", "application/x-ndjson"}
    assert set(content["application/json"]["examples"]) >= {"telemetry", "status", "dossier", "batch"}
    assert {"202", "401", "403", "413", "429", "503"} <= set(post["responses"])
    schemas = set(spec["components"]["schemas"])
    assert {"TelemetryEvent", "StatusEvent", "DossierEvent", "IngestResponse"} <= schemas
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert {"/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


async def test_unknown_routes_and_methods_answer_the_error_shape(api: Api) -> None:
    async with api.client() as client:
        missing = await client.get("/api/v1/nothing")
        wrong = await client.get("/api/v1/events")
    assert missing.status_code == 404 and missing.json() == {"error": "not found: /api/v1/nothing"}
    assert wrong.status_code == 405
    assert wrong.json() == {"error": "method GET is not allowed on /api/v1/events"}
    samples = await api.samples()
    assert samples[("ioc_http_requests_total", (("route", "unmatched"), ("status", "404")))] == 1


# --- the server itself ------------------------------------------------------------------------------------

async def test_a_taken_port_is_an_ioc_error_not_system_exit() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = settings_for(port)
        app = create_app(settings=settings, pipeline=_pipeline(settings), metrics=Metrics(), readiness=list)
        with pytest.raises(IocError, match=rf"cannot listen on 127.0.0.1:{port}: .*in use"):
            await serve(app, settings.http)


async def test_shutdown_finishes_requests_in_flight_then_stops() -> None:
    settings = settings_for(0)
    pipeline = _pipeline(settings, sinks=[SlowSink(0.5)])
    server = HttpServer(create_app(settings=settings, pipeline=pipeline, metrics=Metrics(), readiness=list),
                        HttpSettings.model_validate({"listen": "127.0.0.1:0", "durable_wait": "2s"}))
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    started = asyncio.Event()
    task = asyncio.create_task(server.serve(started=started))
    await asyncio.wait_for(started.wait(), 10)
    assert server.port and server.started
    # The daemon owns the signals: uvicorn installed no handlers of its own.
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers
    url = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        in_flight = asyncio.create_task(client.post("/api/v1/events", content=orjson.dumps(telemetry("f")),
                                                    headers=auth(QTMT)))
        await asyncio.sleep(0.2)  # the request now waits for durability
        await asyncio.wait_for(server.shutdown(), 10)
        response = await in_flight
        assert response.status_code == 202 and response.json()["durable"] is True
        assert task.done() and task.exception() is None
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")


def _pipeline(settings: Settings, sinks: list[SlowSink] | None = None) -> Pipeline:
    return Pipeline(sinks=list(sinks or []), dedup=DedupIndex(None, window=86400, max_keys=10**6),
                    max_bytes=settings.http.max_body, max_future=300)


def test_the_http_push_sample_config_parses() -> None:
    settings = load_settings(ROOT / "deploy" / "http-push.sample.conf")
    assert settings.vendors and settings.vendors[0].sources
