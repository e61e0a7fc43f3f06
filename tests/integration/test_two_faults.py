"""An event with two faults — another source than its topic's AND a bad time — over a real Mosquitto: its
dead letter and its count go to the topic's source, the one the vendor may write and listens to, never to
the source the event claims (issue 13)."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from ioc.connectors.mqtt import MqttConnector

from ioc.config import MqttSettings
from ioc.ingest.dedup import DedupIndex
from ioc.ingest.pipeline import DeadLetterTarget, Pipeline
from tests.mqtt_tools import Collector, assemble_mqtt, publish_all
from tests.servers import Server
from tests.waiting import wait_until

TIME = "2026-03-02T08:00:00+07:00"


def event(source: str, event_id: str, time: str = TIME) -> bytes:
    return orjson.dumps({"id": event_id, "source": source, "type": "telemetry", "time": time,
                         "metric": "env.aqi", "value": 42})


@pytest.fixture
def intake(mosquitto: Server, unique: str) -> Iterator[tuple[MqttConnector, Pipeline]]:
    settings = MqttSettings.model_validate({"url": mosquitto.url, "client_id": f"ioc-{unique}",
                                            "subscribe": ["ioc/v1/events/#"], "session_expiry": "60s"})

    def pipeline(letters: list[DeadLetterTarget]) -> Pipeline:
        return Pipeline(sinks=[], dedup=DedupIndex(None, window=86400, max_keys=10**6), max_bytes=1 << 20,
                        max_future=300, dead_letters=letters)

    connector, made = assemble_mqtt(settings, pipeline)
    connector.start()
    try:
        yield connector, made
    finally:
        connector.close(1)


@pytest.mark.parametrize("bad_time", ["2026-03-02T08:00:00",  # no offset: refused by validation
                                      "2126-03-02T08:00:00+07:00"],  # a century ahead: refused by the check
                         ids=["invalid", "future"])
def test_the_topic_decides_whose_dead_letter_it_is(intake: tuple[MqttConnector, Pipeline], mosquitto: Server,
                                                   unique: str, bad_time: str) -> None:
    connector, pipeline = intake
    wait_until("the SUBACK", lambda: connector.subscribed, 20)
    vendor, claimed = f"v-{unique}", f"other-{unique}"
    letters = Collector("127.0.0.1", mosquitto.port, "ioc/v1/deadletter/#")
    try:
        publish_all("127.0.0.1", mosquitto.port, [
            (f"ioc/v1/events/{vendor}", event(claimed, "two-faults", bad_time)),
            # and the same inside a batch, beside a good event of the vendor
            (f"ioc/v1/events/{vendor}", b"[" + event(vendor, "good") + b"," + event(claimed, "b", bad_time) + b"]"),
        ])
        wait_until("two dead letters", lambda: len(letters.messages) >= 2, 20)
        wait_until("the good event", lambda: pipeline.accepted.get((vendor,)) == 1, 20)
    finally:
        letters.close()
    assert [topic for topic, _ in letters.messages] == [f"ioc/v1/deadletter/{vendor}"] * 2
    for _, body in letters.messages:
        reason = orjson.loads(body)["reason"]
        assert reason.startswith(f"source: '{claimed}' does not match the topic's '{vendor}'"), reason
    assert pipeline.rejected == {(vendor, "source_mismatch"): 2}
    assert pipeline.received == {(vendor,): 3}
    assert (claimed,) not in pipeline.dead_letters and pipeline.dead_letters[(vendor,)] == 2


def test_an_invalid_event_of_the_topics_own_source_keeps_its_reason(
        intake: tuple[MqttConnector, Pipeline], mosquitto: Server, unique: str) -> None:
    connector, pipeline = intake
    wait_until("the SUBACK", lambda: connector.subscribed, 20)
    vendor = f"v-{unique}"
    letters = Collector("127.0.0.1", mosquitto.port, f"ioc/v1/deadletter/{vendor}")
    try:
        publish_all("127.0.0.1", mosquitto.port,
                    [(f"ioc/v1/events/{vendor}", event(vendor, "one-fault", "2026-03-02T08:00:00"))])
        wait_until("the dead letter", lambda: len(letters.messages) >= 1, 20)
    finally:
        letters.close()
    reason = orjson.loads(letters.messages[0][1])["reason"]
    assert reason.startswith("time: ") and "source" not in reason
    assert list(pipeline.rejected) == [(vendor, "invalid_field")]
