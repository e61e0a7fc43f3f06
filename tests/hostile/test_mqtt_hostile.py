"""The MQTT connector under hostile vendors (docs/operations.md "Poison messages", "Vendor fairness",
"Topics").

Measured on 3c5b46e:
- a message whose handling killed the process (an 8 MiB `[{},...]`) crash-looped the daemon on every restart,
  because the broker redelivered the unacknowledged QoS 1 message: a permanent outage;
- MQTT had no per-vendor rate: 3,000 QoS 1 events from a vendor with `rate = 200` were all accepted in < 3 s;
- a vendor publishing on `ioc/v1/events/{its source}/x` (the generated ACL allows it) got a PUBACK and the
  daemon never saw the message (it subscribed `ioc/v1/events/+`): no counter, no dead letter.

The poison here is a real crash: the failpoint `mqtt.poison=abort` kills `ioc run` (SIGKILL, as the OOM
killer or a segfault would) whenever it handles a message holding `IOC-FAILPOINT-POISON`.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import structlog
from ioc.connectors.mqtt import MqttConnector, MqttPublisher, MqttSession

from ioc.config import MqttSettings, Settings, VendorSettings, load_settings, token_sha256
from ioc.envelope import AnyEvent
from ioc.ingest.deadletter import letter_id
from ioc.ingest.dedup import DedupIndex
from ioc.ingest.pipeline import DeadLetterTarget, Pipeline
from ioc.mosquitto_acl import write_mosquitto_files
from ioc.ratelimit import RateLimiter, TokenBucket
from ioc.sinks.base import DurableCallback
from tests.doubles import SettableClock
from tests.e2e.daemon import DaemonProcess, assert_counting_rule, make_daemon
from tests.evaluation_tap import EventTap
from tests.mqtt_tools import Collector, assemble_mqtt, publish_all
from tests.servers import Server, influx_count, start_mosquitto
from tests.waiting import wait_until

MAX_DELIVERIES = 3  # the default of [intake] max_deliveries
POISON_MARKER = "IOC-FAILPOINT-POISON"  # what the failpoint `mqtt.poison` looks for in a payload
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def telemetry(index: int, *, source: str = "qtmt-aqi", run: str = "r", **extra: object) -> bytes:
    """One event; each index has its own microsecond, so every event is its own point in InfluxDB."""
    return orjson.dumps({"id": f"{run}-{index}", "source": source, "type": "telemetry",
                         "time": (BASE + timedelta(microseconds=index)).isoformat(), "metric": "env.aqi",
                         "value": index, "area": "22723", **extra})


def make_pipeline(*sinks: object, dead_letters: list[DeadLetterTarget] | None = None) -> Pipeline:
    return Pipeline(sinks=list(sinks), dedup=DedupIndex(None, window=86400, max_keys=10**6),  # type: ignore[arg-type]
                    max_bytes=8 << 20, max_future=300, dead_letters=dead_letters or [])


def vendor(name: str, sources: list[str], rate: float, burst: float | None = None) -> VendorSettings:
    return VendorSettings(name=name, token_sha256=token_sha256(f"token-{name}"), sources=sources, rate=rate,
                          burst=burst)


# --- pure logic: the journal, the ledger, the verdicts, the buckets --------------------------------------


def test_the_journal_keeps_the_burst_in_flight_and_ignores_what_is_not_one(tmp_path: Path) -> None:
    from ioc.connectors.mqtt.poison import InFlight, InflightJournal

    path = tmp_path / "ioc.db.mqtt-inflight"
    journal = InflightJournal(path)
    assert journal.read() == InFlight()
    journal.write(list(range(1, 257)), alone=False)
    # Another process (the next start) reads what a killed one left: the page cache has it, no fsync.
    assert InflightJournal(path).read() == InFlight(list(range(1, 257)))
    journal.clear()
    assert InflightJournal(path).read() == InFlight()
    journal.write([7], alone=True)  # shorter than the last burst: its stale tail is never read
    assert InflightJournal(path).read() == InFlight([7], alone=True)
    journal.write([65535, 1], alone=False, waiting=True)
    assert InflightJournal(path).read() == InFlight([65535, 1], waiting=True)
    journal.close()
    path.write_bytes(b"garbage that is no journal")
    assert InflightJournal(path).read() == InFlight()
    path.write_bytes(b"IOCJ\x00")  # cut short
    assert InflightJournal(path).read() == InFlight()


def test_a_crash_is_pinned_on_one_message_and_its_burst_is_spared(tmp_path: Path) -> None:
    """Process by process, as the connector drives the guard: the poison P crashed a burst with g1 and g2,
    then twice alone; P is quarantined at its fourth delivery, g1 and g2 never are."""
    from ioc.connectors.mqtt.poison import FAILPOINT_MARKER, PoisonGuard, message_key

    assert POISON_MARKER.encode() == FAILPOINT_MARKER  # the bytes the end-to-end test's poison carries
    store = tmp_path / "ioc.db"
    p, g1, g2 = (("src", b"P"), ("src", b"g1"), ("src", b"g2"))

    def process() -> PoisonGuard:
        guard = PoisonGuard(store, max_deliveries=3)
        guard.recover()
        guard.session(True)
        return guard

    first = process()
    assert first.suspects == set()
    first.journal.write([11, 12, 13], alone=False)  # g1, P, g2 handed over together: the process dies

    second = process()
    assert second.suspects == {11, 12, 13}
    assert not second.take_suspect(99)  # a message that was not in flight
    for mid, message in ((11, g1), (12, p)):
        assert second.take_suspect(mid)
        verdict = second.judge(*message)
        assert verdict.crashes == 1 and not verdict.poison
        if message == g1:
            second.journal.write([11], alone=True)  # handled alone...
            second.journal.clear()  # ...and survived
            second.ledger.clear(verdict.key)
    second.journal.write([12], alone=True)  # P handled alone: the process dies (g2's turn never came)

    third = process()
    assert third.suspects == {12}  # g2 is no suspect any more: it is handled with the others
    assert third.take_suspect(12)
    verdict = third.judge(*p)
    assert (verdict.crashes, verdict.poison) == (2, False)
    third.journal.write([12], alone=True)  # alone again: dies again

    fourth = process()
    assert fourth.take_suspect(12)
    verdict = fourth.judge(*p)
    assert (verdict.crashes, verdict.poison) == (3, True)
    assert verdict.key == message_key(*p)
    assert fourth.ledger.crashes(message_key(*g1)) == 0 and fourth.ledger.crashes(message_key(*g2)) == 0
    fourth.close()


def test_only_a_crash_alone_can_make_poison(tmp_path: Path) -> None:
    """Crashes of bursts of many never quarantine: the neighbours of a poison must never be."""
    from ioc.connectors.mqtt.poison import PoisonGuard

    store = tmp_path / "ioc.db"
    for _ in range(5):
        guard = PoisonGuard(store, max_deliveries=1)
        guard.recover()
        if guard.suspects:
            assert guard.take_suspect(5)
            assert not guard.judge("src", b"good").poison
        guard.journal.write([5, 6], alone=False)
    guard = PoisonGuard(store, max_deliveries=1)
    guard.recover()
    guard.journal.write([5], alone=True)
    guard = PoisonGuard(store, max_deliveries=1)
    guard.recover()
    assert guard.take_suspect(5)
    assert guard.judge("src", b"good").poison  # now alone: pinned


def test_a_crash_while_a_sink_was_full_is_charged_to_no_one(tmp_path: Path) -> None:
    """Handed over while a sink had no room, the burst may have been waiting there when the process was
    killed (an operator restarting a daemon stuck on a full spool): its messages pass alone, uncharged."""
    from ioc.connectors.mqtt.poison import PoisonGuard

    store = tmp_path / "ioc.db"
    for _ in range(5):
        guard = PoisonGuard(store, max_deliveries=1)
        guard.recover()
        if guard.suspects:
            assert guard.take_suspect(5)
            verdict = guard.judge("src", b"waiting")
            assert (verdict.crashes, verdict.poison) == (0, False)
        guard.journal.write([5], alone=True, waiting=True)
    assert len(guard.ledger) == 0


def test_a_lost_session_drops_the_suspects_and_the_ledger_expires(tmp_path: Path) -> None:
    from ioc.connectors.mqtt.poison import PoisonGuard, PoisonLedger

    store = tmp_path / "ioc.db"
    clock = SettableClock(1_000_000.0)
    guard = PoisonGuard(store, max_deliveries=3, expiry=3600, clock=clock)
    guard.journal.write([1, 2], alone=False)
    guard = PoisonGuard(store, max_deliveries=3, expiry=3600, clock=clock)
    assert guard.recover() == 2
    guard.session(False)  # the broker no longer has our session: nothing will be redelivered
    assert not guard.take_suspect(1)
    guard.ledger.charge(b"12345678", "src", alone=True)
    clock.now += 86_400 - 1  # kept at least a day (MIN_EXPIRY), whatever the session expiry
    assert guard.ledger.expire(guard.expiry) == 0
    clock.now += 2
    assert guard.ledger.expire(guard.expiry) == 1 and len(guard.ledger) == 0
    ledger = PoisonLedger(store, clock=clock)
    for index in range(10):
        clock.now += 1
        ledger.charge(index.to_bytes(8, "big"), "src", alone=False)
    assert ledger.expire(10**9, max_rows=4) == 6
    assert len(ledger) == 4 and ledger.crashes((9).to_bytes(8, "big")) == 1  # the newest are kept


def test_take_up_to_grants_what_the_bucket_holds() -> None:
    clock = SettableClock(1_000_000.0)
    bucket = TokenBucket(100, 10, clock=clock)
    assert bucket.take_up_to(4) == 4
    assert bucket.take_up_to(20) == 6
    assert bucket.take_up_to(5) == 0
    clock.now += 0.035  # 3.5 tokens
    assert bucket.take_up_to(5) == 3
    assert bucket.tokens == pytest.approx(0.5)
    small = TokenBucket(0.5, clock=clock)  # a bucket smaller than one message still lets one through
    assert small.take_up_to(3) == 1 and small.take_up_to(3) == 0
    clock.now += 2
    assert small.take_up_to(3) == 1
    limiter = RateLimiter([vendor("a", ["a-src"], 2)], clock=clock)
    assert limiter.take_up_to("a", 5) == 2
    assert limiter.take_up_to("nobody", 5) == 5  # not a vendor: not limited
    assert limiter.take("a", 1) is not None  # the HTTP side of the same bucket still refuses


def test_take_up_to_is_thread_safe() -> None:
    bucket = TokenBucket(1e-9, 10_000)  # no refill to speak of during the test
    granted: list[int] = []

    def worker() -> None:
        granted.append(sum(bucket.take_up_to(3) for _ in range(2000)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 10_000  # exactly what the bucket held (the last grant was one of three)


# --- topics: every topic the generated ACL lets a vendor write is read ----------------------------------

TOKENS = {"vendor-a": "token-a", "ioc": "daemon-password"}


@pytest.fixture(scope="module")
def acl_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    path = tmp_path_factory.mktemp("config") / "ioc.toml"
    path.write_text(f"""
[[vendors]]
name = "vendor-a"
token_sha256 = "{token_sha256(TOKENS["vendor-a"])}"
sources = ["a-src"]
""")
    return load_settings(path)


@pytest.fixture(scope="module")
def acl_broker(acl_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    out = tmp_path_factory.mktemp("acl")
    passwords, acl = write_mosquitto_files(acl_settings, out, dict(TOKENS))
    server = start_mosquitto(out / "broker", password_file=passwords, acl_file=acl)
    yield server
    server.stop()


def test_every_topic_a_vendor_may_publish_is_received(acl_broker: Server, acl_settings: Settings,
                                                      unique: str) -> None:
    """With the default subscription, each message the ACL lets vendor-a publish under ioc/v1/events/ is
    accepted or dead-lettered with a reason: none vanishes (3c5b46e never saw the deeper ones)."""
    settings = MqttSettings(url=acl_broker.url, client_id=f"ioc-{unique}", username="ioc",
                            password=TOKENS["ioc"], session_expiry=60)  # type: ignore[arg-type]
    connector, pipeline = assemble_mqtt(settings, lambda letters: make_pipeline(dead_letters=letters))
    dead = Collector("127.0.0.1", acl_broker.port, "ioc/v1/deadletter/#", username="vendor-a",
                     password=TOKENS["vendor-a"])  # a vendor reads its own dead letters
    connector.start()
    try:
        wait_until("the SUBACK", lambda: connector.subscribed, 15)
        messages = [
            ("ioc/v1/events/a-src", telemetry(1, source="a-src")),
            ("ioc/v1/events/a-src/x", telemetry(2, source="a-src")),
            ("ioc/v1/events/a-src/x/y/z", telemetry(3, source="a-src")),
            ("ioc/v1/events/a-src/batch", b"[" + telemetry(4, source="a-src") + b"," + telemetry(5, source="a-src")
             + b"]"),
            ("ioc/v1/events/a-src/x", telemetry(6, source="b-src")),  # the payload's source is not the topic's
            ("ioc/v1/events/a-src/deep/er", b"{not json"),
        ]
        publish_all("127.0.0.1", acl_broker.port, messages, username="vendor-a", password=TOKENS["vendor-a"])
        wait_until("every message counted", lambda: sum(pipeline.received.values()) == 7, 15)
        letters = dead.wait_for(2)
    finally:
        connector.close(2)
        dead.close()
    assert pipeline.accepted[("a-src",)] == 5
    assert sum(pipeline.rejected.values()) == 2
    assert [topic for topic, _ in letters] == ["ioc/v1/deadletter/a-src"] * 2
    reasons = [orjson.loads(body)["reason"] for _, body in letters]
    assert reasons[0] == "source: 'b-src' does not match the topic's 'a-src'"
    assert reasons[1]  # invalid JSON, with its reason


def test_an_old_session_with_the_former_filter_gives_no_duplicates(mosquitto: Server, unique: str) -> None:
    """A daemon upgraded in place resumes a session that also holds `ioc/v1/events/+`; with `#` beside it
    the broker would send each event twice. The connector drops the old filter; what was queued under it
    while the daemon was down still arrives."""
    source = f"s-{unique}"
    topic = f"ioc/v1/events/{source}"
    pipeline = make_pipeline()

    def connector(subscribe: list[str]) -> MqttConnector:
        made, _ = assemble_mqtt(MqttSettings(url=mosquitto.url, client_id=f"ioc-{unique}",  # type: ignore[arg-type]
                                             session_expiry=60, subscribe=subscribe), pipeline)
        made.start()
        wait_until("the SUBACK", lambda: made.subscribed, 15)
        return made

    old = connector(["ioc/v1/events/+"])
    old.close(2)
    publish_all("127.0.0.1", mosquitto.port, [(topic, telemetry(1, source=source))])  # queued while down
    new = connector(["ioc/v1/events/#"])
    try:
        wait_until("the queued event", lambda: pipeline.accepted[(source,)] == 1, 15)
        time.sleep(0.3)  # the UNSUBSCRIBE is on its way; the next event must match one filter only
        publish_all("127.0.0.1", mosquitto.port, [(topic, telemetry(2, source=source))])
        wait_until("the live event", lambda: pipeline.accepted[(source,)] == 2, 15)
        time.sleep(0.3)  # a negative: no second copy
        assert pipeline.duplicates[(source,)] == 0
    finally:
        new.close(2)


# --- poison: the in-flight journal against a real broker's redelivery ------------------------------------


class HoldingSink:
    """Never durable: nothing is acknowledged, so the broker keeps every message for redelivery."""

    name = "holding"

    def start(self) -> None:
        pass

    def submit(self, points: list[str], on_durable: DurableCallback | None = None, *,
               timeout: float | None = None) -> None:
        pass

    def has_room(self, points: int) -> bool:
        return True

    def problems(self) -> list[str]:
        return []

    def metrics(self) -> Callable[[], list[object]]:
        return list

    def close(self, timeout: float) -> None:
        pass


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_crashed_bursts_redeliveries_are_recognised_by_packet_id(
        mosquitto: Server, unique: str, tmp_path: Path, protocol: str) -> None:
    """The broker resends unacknowledged messages with their packet ids; the connector takes exactly the
    journaled ones as suspects, handles each alone and, as they survive, clears them."""
    from ioc.connectors.mqtt.poison import InflightJournal

    source = f"s-{unique}"
    topic = f"ioc/v1/events/{source}"
    store = tmp_path / "ioc.db"
    settings = MqttSettings(url=mosquitto.url, client_id=f"ioc-{unique}", session_expiry=60,  # type: ignore[arg-type]
                            subscribe=[topic], protocol=protocol)  # type: ignore[arg-type]
    pipeline = make_pipeline(HoldingSink())
    first, _ = assemble_mqtt(settings, pipeline, state_path=store)
    assert first.intake._guard is not None
    first.intake._guard.journal.clear = lambda: None  # type: ignore[method-assign]  # as if killed mid-burst
    first.start()
    wait_until("the SUBACK", lambda: first.subscribed, 15)
    publish_all("127.0.0.1", mosquitto.port, [(topic, telemetry(i, source=source)) for i in range(5)])
    wait_until("five events", lambda: pipeline.accepted[(source,)] == 5, 15)
    first.close(2)  # nothing was acknowledged: the session keeps all five
    in_flight = InflightJournal(f"{store}.mqtt-inflight").read().ids
    assert 1 <= len(in_flight) <= 5  # the last burst (the five may have come in more than one)
    publish_all("127.0.0.1", mosquitto.port, [(topic, telemetry(i, source=source)) for i in range(5, 8)])

    second, _ = assemble_mqtt(settings, pipeline, state_path=store)
    second.start()
    try:
        wait_until("the five again and three new", lambda: pipeline.received[(source,)] == 13, 15)
        metrics = {family.name: family for family in second.metrics()()}
        assert metrics["ioc_mqtt_poison_suspects"].samples[0].value == len(in_flight)
        assert metrics["ioc_mqtt_poison_quarantined"].samples[0].value == 0
        assert second.intake._guard is not None and not second.intake._guard.suspects
        assert len(second.intake._guard.ledger) == 0  # each survived: cleared
        assert pipeline.duplicates[(source,)] == 5 and pipeline.accepted[(source,)] == 8
    finally:
        second.close(2)


# --- poison: a real crash loop, ended --------------------------------------------------------------------


def test_a_poison_message_is_quarantined_after_max_deliveries(
        tmp_path: Path, private_mosquitto: Server, influxdb: Server, database: str, unique: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`ioc run` dies each time it handles the poison (SIGKILL); a supervisor restarts it. It dies at most
    max_deliveries times, then stays up: the poison is dead-lettered `poison`, every good message of the
    same burst is in InfluxDB exactly once, and the counters add up."""
    monkeypatch.setenv("IOC_FAILPOINTS", "mqtt.poison=abort")
    daemon = make_daemon(tmp_path, mqtt_url=private_mosquitto.url, influx_url=influxdb.url, database=database,
                         client_id=f"ioc-{unique}")
    daemon.start()  # makes the persistent session
    assert daemon.terminate() == 0
    poison = telemetry(1000, tags={"note": POISON_MARKER})
    goods = [telemetry(i) for i in range(60)]
    dead = Collector("127.0.0.1", private_mosquitto.port, "ioc/v1/deadletter/#")
    try:
        # Queued while the daemon is down, so they arrive together: the poison in the middle of a burst.
        topic = "ioc/v1/events/qtmt-aqi"
        publish_all("127.0.0.1", private_mosquitto.port,
                    [(topic, body) for body in goods[:30]] + [(topic, poison)] + [(topic, body) for body in goods[30:]])
        def quarantined() -> bool:
            stored = influx_count(influxdb.url, database, "env.aqi")
            assert stored <= len(goods), "the poison was processed and stored"
            return bool(dead.messages) and stored == len(goods)

        deaths = supervise(daemon, until=quarantined)
        time.sleep(1.0)
        assert daemon.process is not None and daemon.process.poll() is None, daemon.log()[-3000:]
        assert 1 <= deaths <= MAX_DELIVERIES, deaths  # it did crash, and not forever
        assert influx_count(influxdb.url, database, "env.aqi") == len(goods)  # all good ones, once each
        letters = [orjson.loads(body) for _, body in dead.messages]
        assert letters == [{"id": letter_id("qtmt-aqi", "poison", poison), "reason": "poison",
                            "payload": poison.decode()}]
        assert dead.messages[0][0] == "ioc/v1/deadletter/qtmt-aqi"
        assert daemon.metric_sum("ioc_events_rejected_total", source="qtmt-aqi", reason="poison") == 1
        assert daemon.metric_sum("ioc_mqtt_poison_quarantined_total") == 1
        assert_counting_rule(daemon)
        assert "mqtt.poison_quarantined" in daemon.log()

        # Acknowledged for good: another restart finds nothing to redeliver and nothing to fear.
        assert daemon.terminate() == 0
        daemon.start()
        time.sleep(1.0)
        assert daemon.process is not None and daemon.process.poll() is None
        assert len(dead.messages) == 1
        assert daemon.metric_sum("ioc_mqtt_messages_received_total") == 0
    finally:
        dead.close()
        daemon.stop()


def supervise(daemon: DaemonProcess, *, until: Callable[[], bool], timeout: float = 150.0) -> int:
    """Run `ioc run`, restarting it whenever it dies, until `until()` holds; returns how often it died."""
    deaths = 0
    daemon.start(wait_ready=False)
    deadline = time.monotonic() + timeout
    while not until():
        assert daemon.process is not None
        if daemon.process.poll() is not None:
            assert daemon.process.returncode == -signal.SIGKILL, daemon.log()[-3000:]  # the failpoint's abort
            deaths += 1
            assert deaths <= MAX_DELIVERIES, f"still dying after {deaths} deaths: a crash loop"
            daemon.start(wait_ready=False)
        assert time.monotonic() < deadline, f"not done after {timeout}s and {deaths} deaths:\n{daemon.log()[-3000:]}"
        time.sleep(0.2)
    return deaths


# --- vendor fairness -------------------------------------------------------------------------------------

FLOOD = """
[[vendors]]
name = "flood"
token_sha256 = "{token}"
sources = ["flood-src"]
rate = 200
"""


def test_a_vendors_rate_holds_on_mqtt(tmp_path: Path, private_mosquitto: Server, influxdb: Server,
                                      database: str, unique: str) -> None:
    """3,000 QoS 1 events as fast as one client sends them, from a vendor with `rate = 200`: what is over
    the rate is refused (dead-lettered `rate_limited`, counted, acknowledged), another vendor is untouched."""
    daemon = make_daemon(tmp_path, mqtt_url=private_mosquitto.url, influx_url=influxdb.url, database=database,
                         client_id=f"ioc-{unique}", extra=FLOOD.format(token=token_sha256("flood-token")))
    daemon.start()
    dead = Collector("127.0.0.1", private_mosquitto.port, "ioc/v1/deadletter/#")
    try:
        flood = [("ioc/v1/events/flood-src", telemetry(i, source="flood-src")) for i in range(3000)]
        other = [("ioc/v1/events/qtmt-aqi", telemetry(i)) for i in range(20)]
        started = time.monotonic()
        publish_all("127.0.0.1", private_mosquitto.port, flood[:1500] + other + flood[1500:])
        wait_until("every flood message counted",
                   lambda: daemon.metric_sum("ioc_events_received_total", source="flood-src") == 3000, 60)
        elapsed = time.monotonic() - started
        accepted = daemon.metric_sum("ioc_events_accepted_total", source="flood-src")
        limited = daemon.metric_sum("ioc_events_rejected_total", source="flood-src", reason="rate_limited")
        # The bucket's burst (one second of rate) plus the rate over the time it took.
        assert 200 <= accepted <= 200 + 200 * elapsed + 1, (accepted, elapsed)
        assert accepted + limited == 3000
        assert daemon.metric_sum("ioc_mqtt_rate_limited_total", vendor="flood") == limited
        assert daemon.metric_sum("ioc_mqtt_rate_limited_total", vendor="qtmt") == 0
        wait_until("the other vendor's events",
                   lambda: daemon.metric_sum("ioc_events_accepted_total", source="qtmt-aqi") == 20, 15)
        # Every refusal is visible: a dead letter, unless too many waited for the broker (then counted).
        wait_until("the dead letters",
                   lambda: len(dead.messages) + daemon.metric_sum("ioc_mqtt_dead_letters_dropped_total")
                   >= limited, 30)
        assert {orjson.loads(body)["reason"] for _, body in dead.messages} == {"rate_limited"}
        assert {topic for topic, _ in dead.messages} == {"ioc/v1/deadletter/flood-src"}
        assert_counting_rule(daemon)
    finally:
        dead.close()
        daemon.stop()


@pytest.fixture
def production_logging() -> Iterator[None]:
    """Debug lines filtered out, as `ioc run` does: printing one per refused message is not what is measured."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    yield
    structlog.configure(**saved)


class SlowSink(HoldingSink):
    """Durable at once, but each point costs the intake `cost` seconds (an expensive path: a slow disk, a
    far InfluxDB): the daemon can take far fewer events than a flood sends."""

    def __init__(self, cost: float) -> None:
        self.cost = cost

    def submit(self, points: list[str], on_durable: DurableCallback | None = None, *,
               timeout: float | None = None) -> None:
        time.sleep(len(points) * self.cost)
        if on_durable is not None:
            on_durable()


FLOOD_PUBLISHER = """
import sys
from tests.mqtt_tools import publish_all
port, topic, rate, count = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
body = open(sys.argv[5], "rb").read().split(b"\\n")
publish_all("127.0.0.1", port, ((topic, body[i % len(body)]) for i in range(count)), rate=rate, window=2000)
"""


@pytest.mark.usefixtures("production_logging")
def test_a_flooding_vendor_does_not_delay_another(mosquitto: Server, unique: str, tmp_path: Path) -> None:
    """Vendor `flood` (rate 200) sends 5,000 QoS 1 events a second, three times what the intake can take
    (each point costs it 0.6 ms here), while vendor `quiet` sends 10 a second: the excess is refused before
    it costs anything, so every quiet event is accepted within 2 s of being published (docs/operations.md).
    Without the limit the intake falls behind by two seconds every second, so over the quiet vendor's 3 s
    of sending its delays pass 4 s. (The bound was 1 s: once in a CI run on 2 cores, shared by the
    flood's publisher, Mosquitto and this process, the last quiet events waited 0.7-1.06 s. What the
    intake costs per event is measured by bench/, not here.)"""
    flood_src, quiet_src = f"flood-{unique}", f"quiet-{unique}"
    settings = MqttSettings(url=mosquitto.url, client_id=f"ioc-{unique}", session_expiry=60,  # type: ignore[arg-type]
                            subscribe=[f"ioc/v1/events/{flood_src}", f"ioc/v1/events/{quiet_src}"])
    session = MqttSession(settings)
    publisher = MqttPublisher(session)  # the excess over a rate is dead-lettered: published, as in the daemon
    pipeline = make_pipeline(SlowSink(0.0006), dead_letters=[publisher])
    delays: list[float] = []

    def on_event(event: AnyEvent) -> None:
        if event.source == quiet_src:
            delays.append(time.time() - float(event.value))  # type: ignore[union-attr]

    pipeline.evaluation = EventTap(on_event)
    connector = MqttConnector(session, pipeline, publisher=publisher,
                              vendors=[vendor("flood", [flood_src], 200), vendor("quiet", [quiet_src], 50)])
    connector.start()
    bodies = tmp_path / "flood.ndjson"
    bodies.write_bytes(b"\n".join(telemetry(i, source=flood_src) for i in range(5000)))
    flood = subprocess.Popen([sys.executable, "-c", FLOOD_PUBLISHER, str(mosquitto.port),
                              f"ioc/v1/events/{flood_src}", "5000", "25000", str(bodies)],
                             cwd=Path(__file__).resolve().parents[2])
    try:
        wait_until("the SUBACK", lambda: connector.subscribed, 15)
        wait_until("the flood", lambda: pipeline.received[(flood_src,)] > 2000, 15)
        quiet = [("ioc/v1/events/" + quiet_src, orjson.dumps({
            "id": f"q-{i}", "source": quiet_src, "type": "telemetry", "time": datetime.now(UTC).isoformat(),
            "metric": "env.aqi", "value": 0.0})) for i in range(30)]
        sent = publish_all("127.0.0.1", mosquitto.port, _stamped(quiet), rate=10)
        flooded = pipeline.received[(flood_src,)]
        wait_until("every quiet event", lambda: len(delays) == sent, 60)
    finally:
        flood.kill()
        flood.wait()
        connector.close(2)
    assert sent == 30
    assert flooded > 12_000, "the flood was too thin to prove anything"
    assert pipeline.rejected[(flood_src, "rate_limited")] > 10_000
    assert max(delays) < 2.0, sorted(delays)[-5:]


def _stamped(messages: list[tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
    """Each event's `value` becomes the wall time it is handed to the publisher."""
    for topic, body in messages:
        event = orjson.loads(body)
        event["value"] = time.time()
        yield topic, orjson.dumps(event)

