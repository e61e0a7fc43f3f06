"""The MQTT connector's parts as pure logic (the broker-facing behaviour is in
tests/integration/test_mqtt_connector.py): the intake's bursts, acknowledgements and vendor rates over a
recording intake, the publisher's drops, and the Intake port the connectors depend on."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any

from ioc.connectors.mqtt.intake import RATE_LIMITED, MqttIntake
from ioc.connectors.mqtt.publisher import MqttPublisher
from ioc.connectors.mqtt.topics import topic_source
from structlog.testing import capture_logs

from ioc.config import MqttSettings, VendorSettings, token_sha256
from ioc.ingest.decode import Decoded, Rejection
from ioc.ingest.pipeline import IngestResult, Pipeline
from ioc.ingest.port import DurableCallback, Intake, retry_later


class FakeSession:
    """What the intake and the publisher use of MqttSession, without a broker."""

    name = "mqtt"
    settings = MqttSettings()
    generation = 7
    client = None
    closed = True

    def __init__(self) -> None:
        self.acked: list[tuple[int, int, int]] = []

    def more_to_read(self) -> bool:
        return False  # every message ends its burst

    def acknowledge(self, acks: Sequence[tuple[int, int, int]]) -> None:
        self.acked += acks


class RecordingIntake:
    def __init__(self) -> None:
        self.batches: list[tuple[list[tuple[bytes, str | None]], DurableCallback | None]] = []
        self.refused: list[tuple[list[Decoded], DurableCallback | None]] = []

    def ingest(self, payload: bytes, *, topic_source: str | None = None, ndjson: bool = False,
               on_durable: DurableCallback | None = None, timeout: float | None = None) -> IngestResult:
        raise AssertionError("the MQTT intake hands over bursts")

    def ingest_batch(self, messages: Sequence[tuple[bytes, str | None]], *,
                     on_durable: DurableCallback | None = None, timeout: float | None = None) -> IngestResult:
        self.batches.append((list(messages), on_durable))
        return IngestResult(accepted=len(messages))

    def admit(self, items: Iterable[Decoded], *, on_durable: DurableCallback | None = None) -> IngestResult:
        self.refused.append((list(items), on_durable))
        return IngestResult()

    def has_room(self, points: int) -> bool:
        return True


def make(vendors: Sequence[VendorSettings] = ()) -> tuple[MqttIntake, FakeSession, RecordingIntake]:
    session, intake = FakeSession(), RecordingIntake()
    return MqttIntake(session, intake, vendors=vendors), session, intake  # type: ignore[arg-type]


def test_a_qos1_message_is_acknowledged_once_durable_on_its_connection() -> None:
    mqtt_intake, session, intake = make()
    mqtt_intake.on_raw_message(b"ioc/v1/events/src-a/x", b"{}", 41, 1)
    (messages, on_durable), = intake.batches
    assert messages == [(b"{}", "src-a")]
    assert session.acked == [] and on_durable is not None
    on_durable()
    assert session.acked == [(7, 41, 1)]  # the generation it came on, for the session to check


def test_qos0_needs_no_acknowledgement_and_a_paused_intake_takes_nothing() -> None:
    mqtt_intake, session, intake = make()
    mqtt_intake.on_message("ioc/v1/events/src-a", b"{}", 0, 0)
    assert intake.batches == [([(b"{}", "src-a")], None)]
    mqtt_intake.pause()
    mqtt_intake.on_message("ioc/v1/events/src-a", b"{}", 5, 1)
    assert len(intake.batches) == 1 and session.acked == []


def test_messages_over_a_vendors_rate_are_refused_undecoded_and_acknowledged() -> None:
    vendor = VendorSettings(name="v", token_sha256=token_sha256("t"), sources=["src-a"], rate=1, burst=2)
    mqtt_intake, session, intake = make([vendor])
    with capture_logs() as logs:
        for mid in range(1, 5):
            mqtt_intake.on_message("ioc/v1/events/src-a", b"%d" % mid, mid, 1)
    assert [messages for messages, _ in intake.batches] == [[(b"1", "src-a")], [(b"2", "src-a")]]
    refused = [item for items, _ in intake.refused for item in items]
    assert [(item.code, item.raw, item.source) for item in refused if isinstance(item, Rejection)] == [
        (RATE_LIMITED, b"3", "src-a"), (RATE_LIMITED, b"4", "src-a")]
    for _, on_durable in intake.refused:
        assert on_durable is not None
        on_durable()
    assert session.acked == [(7, 3, 1), (7, 4, 1)]
    assert [entry["event"] for entry in logs] == ["mqtt.rate_limited", "mqtt.rate_limited"]
    samples = {family.name: family.samples for family in mqtt_intake.collect()}
    assert [(s.labels, s.value) for s in samples["ioc_mqtt_rate_limited"]] == [({"vendor": "v"}, 2.0)]


def test_the_publisher_of_a_closed_session_drops_and_counts_with_one_log_line() -> None:
    publisher = MqttPublisher(FakeSession())  # type: ignore[arg-type]
    with capture_logs() as logs:
        assert not publisher.publish("ioc/v1/alerts/r", b"{}")
        publisher.publish_dead_letter("src", "bad", b"x")
        publisher.publish_dead_letter("src", "bad", b"y")
    assert [entry["event"] for entry in logs] == ["mqtt.publish_dropped"]
    values = {family.name: family.samples[0].value for family in publisher.collect()}
    assert values["ioc_mqtt_dead_letters_dropped"] == 2 and values["ioc_mqtt_publishes_dropped"] == 1
    assert values["ioc_mqtt_pending_publishes"] == 0 and publisher.pending() == 0


def test_topic_source() -> None:
    assert topic_source("ioc/v1/events/qtmt-aqi") == "qtmt-aqi"
    assert topic_source("ioc/v1/events/qtmt-aqi/batch") == "qtmt-aqi"
    assert topic_source("site/other/dvc") == "dvc"


def test_the_pipeline_offers_the_intake_port() -> None:
    """Connectors are written against ioc.ingest.port.Intake; the daemon hands them the Pipeline."""
    for name, method in inspect.getmembers(Intake, inspect.isfunction):
        if name.startswith("_"):
            continue
        wanted = inspect.signature(method).parameters
        offered = inspect.signature(getattr(Pipeline, name)).parameters
        assert all(parameter in offered for parameter in wanted), (name, list(offered))
        assert [p for p in offered.values() if p.default is inspect.Parameter.empty] == \
               [p for p in offered.values() if p.default is inspect.Parameter.empty and p.name in wanted], name
    intake: Intake = RecordingIntake()  # and a checker sees the fake as one too
    assert intake.has_room(1)


def test_retry_later_is_only_for_refusals_of_the_whole_hand_over() -> None:
    def outcome(*reasons: str) -> Any:
        return IngestResult(rejected=[(index, reason) for index, reason in enumerate(reasons)])

    assert retry_later(outcome("overloaded: the sinks are full, retry later"))
    assert retry_later(outcome("sink_error: a sink failed, retry later"))
    assert not retry_later(outcome())
    assert not retry_later(outcome("type: unknown", "overloaded: the sinks are full, retry later"))
