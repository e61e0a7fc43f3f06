"""Reads can be closed (docs/operations.md): with `[http] public_read = false` every route except `/healthz`,
`/readyz` and the wall's shell (its HTML, JavaScript and CSS, which hold no data and must load before the
page can ask for a token) needs the bearer token of a vendor, an operator or a viewer; `/metrics` takes it
as Prometheus sends it; the SSE stream takes it in the `Authorization` header (never in the URL). Through a
real `ioc run`.

On 3c5b46e there was no such key: every read was open to anyone who could reach the port."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ioc.config import token_sha256
from tests.e2e.daemon import OPERATOR_TOKEN, VENDOR_TOKEN, DaemonProcess, make_daemon
from tests.servers import Server

VIEWER_TOKEN = "viewer-token-wall-1"
VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
OPEN = ("/healthz", "/readyz", "/", "/?lang=en", "/static/app.js", "/static/i18n.js", "/static/style.css")


def closed_daemon(tmp_path: Path, mosquitto: Server, influxdb: Server) -> DaemonProcess:
    viewer = f'\n[[viewers]]\nname = "wall-1"\ntoken_sha256 = "{token_sha256(VIEWER_TOKEN)}"\n'
    daemon = make_daemon(tmp_path, mqtt_url=mosquitto.url, influx_url=influxdb.url,
                         database=f"t_{uuid.uuid4().hex[:12]}",
                         client_id=f"ioc-closed-{uuid.uuid4().hex[:8]}", extra=viewer)
    text = daemon.config.read_text().replace("[http]\n", "[http]\npublic_read = false\n", 1)
    daemon.config.write_text(text)
    return daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, mosquitto: Server,
           influxdb: Server) -> Iterator[DaemonProcess]:
    process = closed_daemon(tmp_path_factory.mktemp("closed-reads"), mosquitto, influxdb)
    process.start()  # waits for /readyz, which needs no token
    yield process
    process.stop()


def routes(daemon: DaemonProcess) -> list[tuple[str, str]]:
    """Every (method, path) of the OpenAPI document, path parameters filled in, and the documents."""
    document = httpx.get(f"{daemon.api}/openapi.json", headers=VIEWER, timeout=5).json()
    found = [(method.upper(), re.sub(r"\{[^}]+\}", "x", path))
             for path, operations in document["paths"].items() for method in operations]
    return [*found, ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json"), ("GET", "/nope")]


def test_every_route_but_health_and_the_shell_needs_a_token(daemon: DaemonProcess) -> None:
    listed = routes(daemon)
    assert ("GET", "/api/v1/alerts") in listed and ("GET", "/metrics") in listed
    assert ("GET", "/api/v1/stream") in listed and ("POST", "/api/v1/silences") in listed
    closed = [(method, path) for method, path in listed if path not in OPEN]
    for method, path in closed:
        for headers in ({}, {"Authorization": "Bearer not-a-token"},
                        {"Authorization": f"Basic {VIEWER_TOKEN}"},
                        {"Authorization": f"Bearer {token_sha256(VIEWER_TOKEN)}"}):
            answer = httpx.request(method, daemon.api + path, headers=headers, timeout=5)
            assert answer.status_code == 401, (method, path, headers, answer.status_code, answer.text[:200])
            assert answer.headers["www-authenticate"] == "Bearer"
            assert "public_read" in answer.json()["error"]
        if path == "/api/v1/stream":
            continue  # it never ends: test_the_stream_takes_the_token_in_its_header_only
        # Known, the caller gets past the door to the route's own answer (a 403, 404 or 422, never a 401).
        answer = httpx.request(method, daemon.api + path, headers=VIEWER, timeout=5)
        assert answer.status_code != 401, (method, path, answer.text[:200])
    for path in OPEN:
        answer = httpx.get(daemon.api + path, timeout=5)
        assert answer.status_code == 200, (path, answer.text[:200])
    # The shell holds no data: the page asks for it with the token.
    assert "ioc_" not in httpx.get(f"{daemon.api}/", timeout=5).text


@pytest.mark.parametrize("token", [VIEWER_TOKEN, OPERATOR_TOKEN, VENDOR_TOKEN])
def test_viewers_operators_and_vendors_read(daemon: DaemonProcess, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    for path in ("/api/v1/alerts", "/api/v1/silences", "/api/v1/kpis", "/api/v1/areas", "/api/v1/sources",
                 "/api/v1/telemetry", "/openapi.json", "/docs"):
        answer = httpx.get(daemon.api + path, headers=headers, timeout=5)
        assert answer.status_code == 200, (path, answer.text[:200])


def test_metrics_take_a_bearer_token_as_prometheus_sends_it(daemon: DaemonProcess) -> None:
    # Prometheus' scrape config `authorization: {credentials_file: ...}` sends `Authorization: Bearer <it>`.
    scraped = httpx.get(f"{daemon.api}/metrics", headers={**VIEWER, "Accept": "text/plain;version=0.0.4"},
                        timeout=5)
    assert scraped.status_code == 200 and "ioc_http_requests_total" in scraped.text
    refused = httpx.get(f"{daemon.api}/metrics", timeout=5)
    assert refused.status_code == 401
    # Refusals are counted (before routing, so under the `unmatched` route).
    text = httpx.get(f"{daemon.api}/metrics", headers=VIEWER, timeout=5).text
    assert re.search(r'ioc_http_requests_total\{route="unmatched",status="401"\} [1-9]', text), text[:2000]


def test_the_stream_takes_the_token_in_its_header_only(daemon: DaemonProcess) -> None:
    with httpx.stream("GET", f"{daemon.api}/api/v1/stream", headers=VIEWER, timeout=5) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        first = next(stream.iter_text())
        assert "event: ping" in first or ": connected" in first
    # A token in the URL would be kept by proxies' access logs and browsers' history: not taken.
    for parameter in ("access_token", "token"):
        answer = httpx.get(f"{daemon.api}/api/v1/stream", params={parameter: VIEWER_TOKEN}, timeout=5)
        assert answer.status_code == 401


def test_a_viewer_may_only_read(daemon: DaemonProcess) -> None:
    silence = {"matchers": [{"name": "rule", "value": "x"}], "duration": "1h"}
    answer = httpx.post(f"{daemon.api}/api/v1/silences", json=silence, headers=VIEWER, timeout=5)
    assert answer.status_code == 403, answer.text
    assert httpx.post(f"{daemon.api}/api/v1/alerts/x/ack", headers=VIEWER, timeout=5).status_code == 403
    assert httpx.delete(f"{daemon.api}/api/v1/silences/x", headers=VIEWER, timeout=5).status_code == 403
    answer = httpx.post(f"{daemon.api}/api/v1/events", json=[], headers=VIEWER, timeout=5)
    assert answer.status_code == 403, answer.text
    whoami = httpx.get(f"{daemon.api}/api/v1/whoami", headers=VIEWER, timeout=5)
    assert whoami.status_code == 403
