"""Hostile input on the operators' API through a real `ioc run` (docs/operations.md "Regular expressions",
"Bad input never gets a 5xx"): an evil silence regex meeting long labels never freezes the daemon, and every
bad parameter, time, duration or body of every operator route is answered 4xx with the field named.

Measured on 3c5b46e: the matcher `(a+)+$` (`=~`) and an event with a 30-character tag froze the process
22 s (`/healthz` 21 s); `"duration": "99999999999d"` answered 500."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.daemon import OPERATOR_TOKEN, VENDOR_TOKEN, DaemonProcess, make_daemon
from tests.servers import Server

RULES = """\
rules:
  - id: station-aqi
    kind: threshold
    severity: warning
    match: {type: telemetry, metric: env.aqi}
    group_by: [station]
    op: ">="
    threshold: 151
    summary: "AQI at {{ station }}: {{ value }}"
"""
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
VENDOR = {"Authorization": f"Bearer {VENDOR_TOKEN}"}


def now_iso(offset: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset)).isoformat()


def start_daemon(tmp_path: Path, mosquitto: Server, influxdb: Server) -> DaemonProcess:
    daemon = make_daemon(tmp_path, mqtt_url=mosquitto.url, influx_url=influxdb.url,
                         database=f"t_{uuid.uuid4().hex[:12]}", client_id=f"ioc-hostile-{uuid.uuid4().hex[:8]}",
                         rules=RULES)
    daemon.start()
    return daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, mosquitto: Server,
           influxdb: Server) -> Iterator[DaemonProcess]:
    process = start_daemon(tmp_path_factory.mktemp("hostile-api"), mosquitto, influxdb)
    yield process
    process.stop()
    assert "api.internal_error" not in process.log(), process.log()[-4000:]


def station_event(station: str, value: float = 200.0) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "source": "qtmt-aqi", "type": "telemetry", "time": now_iso(),
            "metric": "env.aqi", "value": value, "tags": {"station": station}}


def test_an_evil_silence_regex_never_freezes_the_daemon(
    tmp_path: Path, mosquitto: Server, influxdb: Server
) -> None:
    daemon = start_daemon(tmp_path, mosquitto, influxdb)
    try:
        api = daemon.api
        # Catastrophic backtracking in a backtracking engine: 2^n steps for n a's before a mismatch.
        silence = httpx.post(f"{api}/api/v1/silences", headers=OPERATOR, timeout=5, json={
            "matchers": [{"name": "station", "value": "(a+)+$", "op": "=~"}], "duration": "1h",
            "comment": "evil"})
        assert silence.status_code == 201, silence.text
        near_miss, hit = "a" * 40 + "!", "a" * 40
        try:
            answer = httpx.post(f"{api}/api/v1/events", headers=VENDOR, timeout=10,
                                content=orjson.dumps([station_event(near_miss), station_event(hit)]))
        except httpx.TimeoutException:
            pytest.fail("the daemon froze: POST /api/v1/events took more than 10 s")
        assert answer.status_code == 202 and answer.json()["accepted"] == 2, answer.text
        # While the evaluation thread matches the silence against both alerts' labels, the daemon answers.
        deadline = time.monotonic() + 20
        seen: dict[str, bool] = {}
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{api}/healthz", timeout=1)
            except httpx.TimeoutException:
                pytest.fail("/healthz took more than 1 s while an evil regex met a long label")
            assert health.status_code == 200
            alerts = httpx.get(f"{api}/api/v1/alerts", timeout=1).json()
            seen = {alert["labels"]["station"]: alert["silenced"] for alert in alerts}
            if len(seen) == 2:
                break
            time.sleep(0.05)
        # The regex is matched, anchored at both ends: the whole value must match.
        assert seen == {near_miss: False, hit: True}, seen
    finally:
        daemon.stop()


def test_a_huge_silence_duration_is_a_400(daemon: DaemonProcess) -> None:
    answer = httpx.post(f"{daemon.api}/api/v1/silences", headers=OPERATOR, timeout=5, json={
        "matchers": [{"name": "rule", "value": "x"}], "duration": "99999999999d"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith("duration: "), answer.text


def silence(fields: dict[str, Any] | None = None, **more: Any) -> bytes:
    """A silence body with `fields` in place of the defaults (a field set to `...` is left out); Python's
    json writes what orjson refuses (integers past 64 bits, `Infinity`)."""
    body: dict[str, Any] = {"matchers": [{"name": "rule", "value": "station-aqi"}], "duration": "1h"}
    body.update(fields or {}, **more)
    return json.dumps({key: value for key, value in body.items() if value is not ...}).encode()


LONG_ID = "x" * 8000

# (method, path, headers, body) -> the status expected, and a text the error must name (or None).
CASES: list[tuple[str, str, dict[str, Any], bytes | None, int, str | None]] = [
    # silences: durations out of range
    *[("POST", "/api/v1/silences", OPERATOR, silence(duration=d), 400, "duration")
      for d in ("99999999999d", "9" * 400 + "s", "1e309s", "-5s", "0s", "", "1x", 1e308, -5, 0, True,
                float(10**20), 3650 * 86400 * 100, "36500d")],
    *[("POST", "/api/v1/silences", OPERATOR, body, 400, "duration")
      for body in (b'{"matchers":[{"name":"rule","value":"x"}],"duration":1e400}',
                   b'{"matchers":[{"name":"rule","value":"x"}],"duration":' + b"9" * 500 + b"}",
                   b'{"matchers":[{"name":"rule","value":"x"}],"duration":NaN}',
                   b'{"matchers":[{"name":"rule","value":"x"}],"duration":Infinity}')],
    # silences: times beyond what a datetime (or the store) holds, or too far ahead
    *[("POST", "/api/v1/silences", OPERATOR, silence({"duration": ..., **times}), 400, field)
      for times, field in (
          ({"ends_at": "9999-12-31T23:59:59-23:59"}, "ends_at"),
          ({"ends_at": "0001-01-01T00:00:00+14:00"}, "ends_at"),
          ({"ends_at": "0001-01-01T00:00:00Z"}, "ends_at"),
          ({"ends_at": "3026-01-01T00:00:00Z"}, "ends_at"),
          ({"ends_at": "10000-01-01T00:00:00Z"}, "ends_at"),
          ({"ends_at": "2026-13-45T00:00:00Z"}, "ends_at"),
          ({"ends_at": "2026-03-02T08:00:00"}, "ends_at"),  # no offset
          ({"ends_at": 1e400}, "ends_at"),
          ({"ends_at": 99999999999999999999}, "ends_at"),
          ({"ends_at": -1}, "ends_at"),
          ({"starts_at": "0001-01-01T00:00:00+14:00", "ends_at": now_iso(3600)}, "starts_at"),
          ({"starts_at": "9999-12-31T23:00:00-23:59", "ends_at": "9999-12-31T23:59:59-23:59"}, "starts_at"),
          ({"starts_at": "0001-01-01T00:00:00Z", "duration": "1h"}, "starts_at"),
          ({"starts_at": "9999-12-31T23:00:00Z", "duration": "1h"}, "starts_at"),
          ({"ends_at": now_iso(3600), "duration": "1h"}, "ends_at"),
          ({"ends_at": now_iso(-3600)}, "ends_at"),
      )],
    # silences: regular expressions RE2 cannot take, too long, or invalid
    *[("POST", "/api/v1/silences", OPERATOR,
       silence(matchers=[{"name": "station", "value": value, "op": op}]), 400, "matchers.0")
      for value, op in (("(a)\\1", "=~"), ("(?=a)b", "=~"), ("(?<!a)b", "!~"), ("(", "=~"), ("a{2000}", "=~"),
                        ("a" * 1025, "=~"), ("a" * 1025, "="), ("x)|(y", "=~"), ("[z-a]", "=~"),
                        ("((((((((((a{1000}){1000}){1000}))))))))", "=~"))],
    # silences: bodies of the wrong shape
    *[("POST", "/api/v1/silences", OPERATOR, body, 400, None)
      for body in (b"", b"not json", b"\xff\xfe\xfd", b"[]", b"null", b"1e999", b"[" * 30_000 + b"]" * 30_000,
                   b'{"matchers": []}', b'{"matchers": [{"name": "", "value": "x"}]}',
                   b'{"matchers": [{"name": "a", "value": "x", "op": "=="}]}',
                   b'{"matchers": [{"name": "a", "value": 1}], "duration": "1h"}',
                   b'{"matchers": [{"name": "a", "value": "x"}], "duration": "1h", "nope": 1}',
                   b'{"matchers": [{"name": "a", "value": "x"}], "duration": "1h", "comment": ' + b'"'
                   + b"c" * 5000 + b'"}',
                   b'{"matchers": [{"name": "a", "value": "\xed\xa0\x80"}], "duration": "1h"}',
                   b'{"matchers": [{"name": "a", "value": "\\ud800"}], "duration": "1h"}')],
    ("POST", "/api/v1/silences", OPERATOR, b'{"comment": "' + b"x" * 70_000 + b'"}', 413, None),
    ("POST", "/api/v1/silences", {}, silence(), 401, None),
    ("POST", "/api/v1/silences", VENDOR, silence(), 403, None),
    ("POST", "/api/v1/silences", {"Authorization": b"Bearer \xff\xfe"}, silence(), 401, None),
    # silences: listing, one, delete
    ("GET", "/api/v1/silences?status=bogus", {}, None, 400, "status"),
    ("GET", "/api/v1/silences?status=%ff%fe", {}, None, 400, "status"),
    ("GET", "/api/v1/silences?status=%00", {}, None, 400, "status"),
    ("GET", f"/api/v1/silences/{LONG_ID}", {}, None, 404, None),
    ("GET", "/api/v1/silences/%ff%00", {}, None, 404, None),
    ("DELETE", "/api/v1/silences/nope", OPERATOR, None, 404, None),
    ("DELETE", f"/api/v1/silences/{LONG_ID}", OPERATOR, None, 404, None),
    ("DELETE", "/api/v1/silences/nope", {}, None, 401, None),
    ("DELETE", "/api/v1/silences/nope", VENDOR, None, 403, None),
    # alerts: listing parameters
    ("GET", "/api/v1/alerts?state=bogus", {}, None, 400, "state"),
    ("GET", "/api/v1/alerts?state=%ff", {}, None, 400, "state"),
    ("GET", "/api/v1/alerts?severity=%00", {}, None, 400, "severity"),
    ("GET", "/api/v1/alerts?limit=0", {}, None, 422, "limit"),
    ("GET", "/api/v1/alerts?limit=-1", {}, None, 422, "limit"),
    ("GET", "/api/v1/alerts?limit=abc", {}, None, 422, "limit"),
    ("GET", "/api/v1/alerts?limit=1e309", {}, None, 422, "limit"),
    ("GET", "/api/v1/alerts?limit=" + "9" * 5000, {}, None, 422, "limit"),
    ("GET", "/api/v1/alerts?limit=10001", {}, None, 422, "limit"),
    ("GET", f"/api/v1/alerts/{LONG_ID}", {}, None, 404, None),
    ("GET", "/api/v1/alerts/%ff%00", {}, None, 404, None),
    # alerts: ack and unack
    ("POST", "/api/v1/alerts/nope/ack", OPERATOR, None, 404, None),
    ("POST", f"/api/v1/alerts/{LONG_ID}/ack", OPERATOR, None, 404, None),
    ("POST", "/api/v1/alerts/%ff%00/unack", OPERATOR, None, 404, None),
    ("POST", "/api/v1/alerts/nope/ack", OPERATOR, b"\xff" * 100, 404, None),
    ("POST", "/api/v1/alerts/nope/ack", {}, None, 401, None),
    ("POST", "/api/v1/alerts/nope/unack", VENDOR, None, 403, None),
    # the wall's reads
    ("GET", "/api/v1/areas?at=0000-01-01", {}, None, 400, "at"),
    ("GET", "/api/v1/areas?at=2026-02-30", {}, None, 400, "at"),
    ("GET", "/api/v1/areas?at=%ff", {}, None, 422, "at"),
    ("GET", "/api/v1/whoami", {"Authorization": "Bearer " + "x" * 6000}, None, 401, None),
]


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "names"), CASES,
                         ids=[f"{i}-{c[0]}-{c[1][:40]}" for i, c in enumerate(CASES)])
def test_bad_input_is_a_4xx_naming_the_field(daemon: DaemonProcess, method: str, path: str,
                                             headers: dict[str, Any], body: bytes | None, status: int,
                                             names: str | None) -> None:
    sent = {"Content-Type": "application/json", **headers} if body is not None else headers
    answer = httpx.request(method, daemon.api + path, headers=sent, content=body, timeout=10)
    assert answer.status_code == status, (answer.status_code, answer.text[:500])
    error = answer.json()["error"]
    assert isinstance(error, str) and error
    if names is not None:
        assert error.startswith(f"{names}") or f"; {names}" in error, error
