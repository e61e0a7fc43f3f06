"""Hostile payloads against a real `ioc run` with Mosquitto and InfluxDB (issue 9; docs/operations.md "Payload
size and shape", "Bad input never gets a 5xx"). Each test is a failure measured on 3c5b46e:

- a 1 MiB body of ~349k empty objects: 202 after 8.6 s and 1.5 GB of RSS that stayed; over MQTT, 8 MiB
  went past 13.5 GB. Now: refused whole (`too many items`), memory in proportion to the payload;
- times no store can hold (year 1, 1600, 9999) were accepted, then refused by InfluxDB or the dossier
  tracker; now refused at intake, naming the field;
- 3,000 dossiers over 500 unknown area codes wrote 500 warning lines; now a line a minute at most, and
  counted per source in /metrics;
- a dead letter carried the whole payload; now at most its first 64 KiB, with `"truncated": true`;
- a message of 10,000 bad items made 10,000 dead letters, 9,000 of them dropped (counted); now one.

Memory is read from /proc (VmRSS, VmHWM reset through clear_refs) with generous bounds: they hold with
room to spare on a busy machine and still fail on the old code by a factor of ten or more.
"""

from __future__ import annotations

import base64
import resource
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from ioc.aggregators.rollup import AreaNodes
from ioc.areas import AreaRegistry
from tests.e2e.daemon import VENDOR_TOKEN, DaemonProcess, assert_counting_rule, make_daemon
from tests.mqtt_tools import Collector, publish_all
from tests.servers import Server, influx_query
from tests.waiting import wait_until

SOURCE = "qtmt-aqi"  # the e2e config's vendor `qtmt` may send for it
TOPIC = f"ioc/v1/events/{SOURCE}"
NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
MiB = 1 << 20
# The daemon runs under this address-space cap: the old code would otherwise take the whole machine
# (13.5 GB for one 8 MiB message); under it, it fails instead. The fixed daemon stays under 1 GiB of it.
ADDRESS_SPACE_CAP = 3 << 30


@dataclass
class Rig:
    daemon: DaemonProcess
    mosquitto: Server
    influx_url: str
    database: str

    @property
    def pid(self) -> int:
        assert self.daemon.process is not None
        return self.daemon.process.pid

    def post(self, body: bytes, content_type: str = "application/json", timeout: float = 60) -> httpx.Response:
        return httpx.post(f"{self.daemon.api}/api/v1/events", content=body, timeout=timeout,
                          headers={"Authorization": f"Bearer {VENDOR_TOKEN}", "Content-Type": content_type})

    def status(self, key: str) -> int:
        """A /proc/PID/status figure in bytes (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def reset_peak(self) -> None:
        """VmHWM := VmRSS, so the next reading of VmHWM is the peak of what follows."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def settled_rss(self, timeout: float = 15.0) -> int:
        """VmRSS once it stops falling: the daemon hands memory back shortly after a big payload."""
        time.sleep(1.5)
        deadline = time.monotonic() + timeout
        last = self.status("VmRSS")
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.status("VmRSS")
            if now >= last - 256 * 1024:
                return now
            last = now
        return last

    def start(self) -> None:
        """Start the daemon under the address-space cap and warm it up: the first big body starts the
        HTTP worker threads and pages in code, a one-time growth that is not what the tests measure."""
        self.daemon.start()
        resource.prlimit(self.pid, resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))
        warm = [telemetry(f"warm-{i}", value=i) for i in range(2000)] + [{"id": "bad"}]
        for _ in range(2):
            assert self.post(orjson.dumps(warm)).status_code == 202


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, mosquitto: Server, influxdb: Server) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("hostile-payloads")
    database = f"t_{uuid.uuid4().hex[:12]}"
    daemon = make_daemon(tmp, mqtt_url=mosquitto.url, influx_url=influxdb.url, database=database,
                         client_id=f"ioc-hostile-{uuid.uuid4().hex[:8]}")
    running = Rig(daemon, mosquitto, influxdb.url, database)
    running.start()
    yield running
    daemon.stop()


@pytest.fixture
def rig(running: Rig) -> Rig:
    """The module's daemon; a test that killed it fails, and the next one gets a new one."""
    assert running.daemon.process is not None
    if running.daemon.process.poll() is not None:
        running.start()
    return running


def telemetry(event_id: str, **fields: object) -> dict[str, object]:
    return {"id": event_id, "source": SOURCE, "type": "telemetry", "time": NOW.isoformat(),
            "metric": "env.aqi", "value": 42, "area": "22723", **fields}


def dossier(event_id: str, **fields: object) -> dict[str, object]:
    return {"id": event_id, "source": SOURCE, "type": "dossier", "time": NOW.isoformat(), "area": "22723",
            "dossier_id": f"hs-{event_id}", "procedure": "1.001612", "status": "received",
            "received_at": NOW.isoformat(), "due_at": (NOW + timedelta(days=3)).isoformat(),
            "channel": "online", "level": "commune", **fields}


def empty_objects(size: int) -> bytes:
    count = (size - 1) // 3
    return b"[" + b",".join([b"{}"] * count) + b"]"


def rejected(rig: Rig, reason: str) -> float:
    return rig.daemon.metric_sum("ioc_events_rejected_total", source=SOURCE, reason=reason)


# --- size and shape ------------------------------------------------------------------------------------

def test_a_megabyte_of_empty_objects_is_refused_whole_without_growing_memory(rig: Rig) -> None:
    body = empty_objects(MiB)  # the measured payload: ~349k `{}`
    items = body.count(b"{}")
    baseline = rig.settled_rss()
    rig.reset_peak()
    started = time.monotonic()
    response = rig.post(body)
    elapsed = time.monotonic() - started
    assert response.status_code == 413, response.text[:500]
    assert response.json() == {"error": f"too many items: {items} > 10000"}
    peak = rig.status("VmHWM") - baseline
    assert peak < 10 * len(body), f"peak RSS grew by {peak / MiB:.0f} MiB for a 1 MiB body"
    assert elapsed < 5, f"answered after {elapsed:.1f}s"
    assert rig.settled_rss() < baseline * 1.1


def test_eight_mebibytes_of_empty_objects_over_mqtt_is_one_truncated_dead_letter(rig: Rig) -> None:
    payload = empty_objects(8 * MiB - 16)
    items = payload.count(b"{}")
    before = rejected(rig, "too_many_items")
    baseline = rig.settled_rss()
    rig.reset_peak()
    dead = Collector("127.0.0.1", rig.mosquitto.port, f"ioc/v1/deadletter/{SOURCE}")
    try:
        publish_all("127.0.0.1", rig.mosquitto.port, [(TOPIC, payload)])
        [(_, letter)] = dead.wait_for(1, timeout=60)
    finally:
        dead.close()
    body = orjson.loads(letter)
    assert body["reason"] == f"too many items: {items} > 10000"
    assert body["truncated"] is True
    assert body["payload"] == payload[:64 * 1024].decode()
    assert len(letter) < 70 * 1024
    wait_until("the refusal counted", lambda: rejected(rig, "too_many_items") == before + 1, 10)
    peak = rig.status("VmHWM") - baseline
    assert peak < 10 * len(payload), f"peak RSS grew by {peak / MiB:.0f} MiB for an 8 MiB message"
    assert rig.settled_rss() < baseline * 1.1
    assert_counting_rule(rig.daemon)


def test_ten_thousand_bad_items_in_one_message_are_one_dead_letter_and_none_dropped(rig: Rig) -> None:
    payload = orjson.dumps([{"id": f"bad-{i}", "source": SOURCE} for i in range(10_000)])
    dropped = rig.daemon.metric_sum("ioc_mqtt_dead_letters_dropped_total")
    received = rig.daemon.metric_sum("ioc_events_received_total", source=SOURCE)
    dead = Collector("127.0.0.1", rig.mosquitto.port, f"ioc/v1/deadletter/{SOURCE}")
    try:
        publish_all("127.0.0.1", rig.mosquitto.port, [(TOPIC, payload)])
        wait_until("the 10,000 items counted", lambda: rig.daemon.metric_sum(
            "ioc_events_received_total", source=SOURCE) == received + 10_000, 30)
        time.sleep(1)  # any further dead letter would arrive by now
        letters = dead.wait_for(1, timeout=10)
    finally:
        dead.close()
    assert len(letters) == 1, f"{len(letters)} dead letters for one message"
    body = orjson.loads(letters[0][1])
    assert body["reason"].startswith("10000 items rejected: [0] type: required field missing")
    assert body["truncated"] is True and body["payload"] == payload[:64 * 1024].decode()
    assert rig.daemon.metric_sum("ioc_mqtt_dead_letters_dropped_total") == dropped
    assert_counting_rule(rig.daemon)


def hostile_bodies() -> dict[str, bytes]:
    """Payloads within `max_body` and `max_items` whose shape used to cost memory per item or per key."""
    junk = b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(80)) + b"}"  # ~840 B, 80 unknown keys
    keys = b'{"id":"k","source":"qtmt-aqi","type":"telemetry","time":"2026-03-02T08:00:00Z",' + b",".join(
        b'"k%d":0' % i for i in range(700_000)) + b"}"
    return {
        "10000 items of 80 unknown keys": b"[" + b",".join([junk] * 10_000) + b"]",
        "one object of 700k unknown keys": keys,
        "10000 items nesting 400 empty arrays": b"[" + b",".join([b"[" + b"[]," * 270 + b"[]]"] * 10_000) + b"]",
        "one 8 MiB string": b'"' + b"a" * (8 * MiB - 64) + b'"',
        "four million NDJSON lines of one byte": b"x\n" * (4 * MiB),
    }


@pytest.mark.parametrize("name", list(hostile_bodies()))
def test_payloads_within_the_limits_cost_memory_in_proportion_to_their_size(rig: Rig, name: str) -> None:
    body = hostile_bodies()[name]
    assert len(body) <= 8 * MiB
    baseline = rig.settled_rss()
    rig.reset_peak()
    response = rig.post(body, "application/x-ndjson" if "NDJSON" in name else "application/json")
    assert response.status_code in (202, 413), response.text[:500]
    peak = rig.status("VmHWM") - baseline
    assert peak < max(10 * len(body), 40 * MiB), f"{name}: peak RSS grew by {peak / MiB:.0f} MiB"
    assert rig.settled_rss() < baseline * 1.1, name


def test_max_items_counts_items_exactly_whatever_the_commas(rig: Rig) -> None:
    # 5,000 events hold ~90,000 commas: an estimate from commas must not refuse them.
    events = [telemetry(f"many-{i}", tags={"station": "a,b", "line": "c,d,e"}) for i in range(5000)]
    body = orjson.dumps(events)
    assert body.count(b",") > 10_000
    response = rig.post(body)
    assert response.status_code == 202, response.text[:500]
    assert response.json()["accepted"] == 5000
    over = rig.post(orjson.dumps([{}] * 10_001))
    assert over.status_code == 413 and over.json() == {"error": "too many items: 10001 > 10000"}
    lines = b"\n".join(orjson.dumps(telemetry(f"nd-{i}")) for i in range(10_001)) + b"\n\n"
    over = rig.post(lines, "application/x-ndjson")
    assert over.status_code == 413 and over.json() == {"error": "too many items: 10001 > 10000"}


def test_a_dead_letter_carries_at_most_64_kib_cut_at_a_character(rig: Rig) -> None:
    big = orjson.dumps(telemetry("big", unit="ạ" * 60_000))  # ~180 KB, 3-byte characters
    binary = b"\xff" + b"x" * 100_000
    dead = Collector("127.0.0.1", rig.mosquitto.port, f"ioc/v1/deadletter/{SOURCE}")
    try:
        publish_all("127.0.0.1", rig.mosquitto.port, [(TOPIC, big), (TOPIC, binary)])
        letters = [orjson.loads(payload) for _, payload in dead.wait_for(2, timeout=30)]
    finally:
        dead.close()
    text, raw = sorted(letters, key=lambda letter: "encoding" in letter)
    assert text["truncated"] is True and "encoding" not in text
    assert big.decode().startswith(text["payload"])
    assert 64 * 1024 - 3 <= len(text["payload"].encode()) <= 64 * 1024
    assert "over the limit" in text["reason"]
    assert raw["truncated"] is True and raw["encoding"] == "base64"
    assert base64.b64decode(raw["payload"]) == binary[:64 * 1024]


# --- times no store can hold ---------------------------------------------------------------------------

OUT_OF_RANGE = [
    ("time", "0001-01-01T00:00:00Z"),
    ("time", "1600-01-01T00:00:00+07:00"),
    ("time", "1969-12-31T23:59:59Z"),
    ("due_at", "0001-01-01T00:00:00Z"),
    ("due_at", "9999-12-31T23:59:59Z"),
    ("received_at", "1677-09-21T00:12:43Z"),
    ("finished_at", "2262-04-12T00:00:00Z"),
]


def test_times_no_store_can_hold_are_refused_at_intake_naming_the_field(rig: Rig) -> None:
    events = []
    for index, (field, value) in enumerate(OUT_OF_RANGE):
        if field == "time":
            events.append(telemetry(f"range-{index}", time=value))
        else:
            extra = {"status": "done"} if field == "finished_at" else {}
            events.append(dossier(f"range-{index}", **{field: value, **extra}))
    edge = dossier("range-edge", due_at="2199-12-31T23:59:59Z")
    response = rig.post(orjson.dumps([*events, edge]))
    assert response.status_code == 202, response.text[:500]
    answer = response.json()
    assert answer["accepted"] == 1  # only the dossier due on the last day of the range
    errors = {item["index"]: item["error"] for item in answer["rejected"]}
    for index, (field, value) in enumerate(OUT_OF_RANGE):
        assert errors[index] == (f"{field}: {value} is outside the range a store can hold "
                                 "(1970-01-01 .. 2199-12-31)"), errors[index]


def test_the_ends_of_the_time_range_are_stored_and_tracked(rig: Rig) -> None:
    earliest = telemetry("epoch", time="1970-01-01T00:00:00Z", metric="env.epoch")
    latest_due = dossier("far", due_at="2199-12-31T23:59:59.999999Z", area="22723")
    response = rig.post(orjson.dumps([earliest, latest_due]))
    assert response.status_code == 202 and response.json()["accepted"] == 2, response.text[:500]
    assert response.json()["durable"] is True

    def stored() -> bool:
        series = influx_query(rig.influx_url, rig.database, 'SELECT "value" FROM "env.epoch"')
        return bool(series) and series[0]["values"][0][0] == 0

    wait_until("the point at 1970-01-01T00:00:00Z in InfluxDB", stored, 20)
    wait_until("the dossier due in 2199 applied by the tracker",
               lambda: rig.daemon.metric_sum("ioc_aggregator_dossier_events_total", outcome="applied") >= 1,
               20)
    failures = [line for line in rig.daemon.log().splitlines()
                if '"level":"error"' in line or "out of range" in line]
    assert failures == []


# --- logs that scale with the attacker -----------------------------------------------------------------

def test_unknown_areas_are_counted_per_source_and_logged_a_bounded_number_of_times(rig: Rig) -> None:
    lines_before = rig.daemon.log().count('"aggregator.unknown_area"')
    body = orjson.dumps([dossier(f"unknown-{i}", area=f"X{i % 500:04d}") for i in range(3000)])
    response = rig.post(body)
    assert response.status_code == 202 and response.json()["accepted"] == 3000, response.text[:500]
    wait_until("the 3000 events of unknown areas counted",
               lambda: rig.daemon.metric_sum("ioc_aggregator_dossier_unknown_area_events_total") >= 3000, 30)
    lines = rig.daemon.log().count('"aggregator.unknown_area"') - lines_before
    assert lines <= 2, f"{lines} warning lines for 500 unknown area codes"
    counted = rig.daemon.metric_sum("ioc_aggregator_dossier_unknown_area_events_total", source=SOURCE)
    assert counted == 3000, "not counted per source"


def test_the_unknown_area_log_is_one_line_a_minute_with_a_count() -> None:
    clock = [1000.0]
    nodes = AreaNodes(AreaRegistry.default(), lambda: None, monotonic=lambda: clock[0])
    at = NOW.timestamp()
    with capture_logs() as logs:
        for index in range(500):
            nodes.chain_for(f"X{index}", "commune", at)
            clock[0] += 0.1  # 50 s in all
        nodes.chain_for("X0", "commune", at)  # known by now as unknown: not new
        nodes.log_unknown_areas()  # within the minute: nothing yet
        clock[0] += 11
        nodes.log_unknown_areas()
        nodes.log_unknown_areas()
    lines = [line for line in logs if line["event"] == "aggregator.unknown_area"]
    assert [(line["codes"], line["example"]) for line in lines] == [(1, "X0"), (499, "X499")]


# --- never a 5xx ---------------------------------------------------------------------------------------

NASTY = {
    "bad UTF-8": b'{"id":"\xff\xfe","source":"qtmt-aqi"}',
    "bad UTF-8 in a batch": b'[{"id":"a"},{"id":"\xc3\x28"}]',
    "1e400": orjson.dumps(telemetry("e400")).replace(b'"value":42', b'"value":1e400'),
    "10**1000": orjson.dumps(telemetry("big")).replace(b'"value":42', b'"value":' + b"9" * 1000),
    "-10**1000 in a batch": b"[" + orjson.dumps(telemetry("neg")).replace(b'"value":42', b'"value":-' + b"9" * 1000)
    + b"," + orjson.dumps(telemetry("fine")) + b"]",
    "100k deep arrays": b"[" * 100_000 + b"]" * 100_000,
    "100k deep objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "100k deep in a batch": b"[" + b"[" * 100_000 + b"]" * 100_000 + b"]",
    "lone surrogate": orjson.dumps(telemetry("s")).replace(b'"id":"s"', b'"id":"\\ud800"'),
    "lone surrogate in a batch": b'[{"id":"\\udc00"},' + orjson.dumps(telemetry("t")) + b"]",
    "surrogate as UTF-8": b'{"id":"\xed\xa0\x80"}',
    "NUL bytes": b'{"id":"a\x00b"}',
    "NUL escapes": orjson.dumps(telemetry("a\x00b", tags={"k\x00": "v\x00"})),
    "odd Unicode": orjson.dumps(telemetry("\u202e\ufeff\U0001f4a9", tags={"\u0301": "\uffff"})),
    "BOM": b"\xef\xbb\xbf" + orjson.dumps(telemetry("bom")),
    "only whitespace": b" \r\n\t ",
    "empty array": b"[]",
    "unterminated string": b'["' + b"\\\"" * 50_000,
    "a number": b"12345678901234567890123456789",
    "null": b"null",
    "huge tag count": orjson.dumps(telemetry("tags", tags={f"k{i}": "v" for i in range(20_000)})),
    "huge time": orjson.dumps(telemetry("t1", time="9" * 10_000)),
}


@pytest.mark.parametrize("name", list(NASTY))
def test_bad_bodies_never_get_a_5xx(rig: Rig, name: str) -> None:
    for content_type in ("application/json", "application/x-ndjson"):
        response = rig.post(NASTY[name], content_type)
        assert response.status_code < 500, f"{name} ({content_type}): {response.status_code} {response.text[:500]}"
        if response.status_code == 202:
            assert all(len(item["error"]) < 1024 for item in response.json()["rejected"])
    assert httpx.get(f"{rig.daemon.api}/healthz", timeout=5).status_code == 200
