"""MQTT payloads fuzzed over a real `ioc run` and Mosquitto (docs/operations.md: every message a vendor can
publish under `ioc/v1/events/` is received and either accepted or dead-lettered with a reason; none
vanishes; no payload takes the daemon down).

Each case is one QoS 1 message; its outcomes are read back from `/metrics` and `ioc/v1/deadletter/#`
(see `tests.fuzz.harness.MqttFuzzer`), so a message that vanished is shrunk by hypothesis to a minimal one.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from tests.e2e.daemon import DaemonProcess
from tests.fuzz.conftest import short
from tests.fuzz.harness import MqttFuzzer, settle_counts
from tests.fuzz.strategies import mqtt_messages
from tests.servers import Server


@pytest.fixture(scope="module")
def mqtt(fuzz_daemon: DaemonProcess, mosquitto: Server) -> Iterator[MqttFuzzer]:
    address = urlsplit(mosquitto.url)
    fuzzer = MqttFuzzer(fuzz_daemon, address.hostname or "127.0.0.1", address.port or 1883)
    yield fuzzer
    fuzzer.close()


def test_every_mqtt_payload_is_accepted_or_dead_lettered(mqtt: MqttFuzzer) -> None:
    @short(examples=250)
    @given(message=mqtt_messages())
    def run(message: tuple[str, bytes]) -> None:
        mqtt.run([message])

    run()
    mqtt.checkpoint()
    tally = mqtt.tally
    assert tally.accepted > 0 and tally.dead_lettered > 0, f"the cases are too one-sided: {tally}"


def test_a_burst_of_fuzzed_messages_adds_up(mqtt: MqttFuzzer) -> None:
    """The same oracle over bursts of 50 messages, as the connector takes them from the socket. No
    shrinking: `MqttFuzzer.run` replays a burst that does not add up one message at a time and names the
    message that broke it."""

    @settings(short(examples=10), phases=[Phase.explicit, Phase.generate])
    @given(messages=st.lists(mqtt_messages(), min_size=50, max_size=50))
    def run(messages: list[tuple[str, bytes]]) -> None:
        mqtt.run(messages)

    run()
    mqtt.checkpoint()


def test_after_the_fuzzing_the_counts_add_up_and_no_accepted_point_is_refused_later(
        mqtt: MqttFuzzer, fuzz_daemon: DaemonProcess) -> None:
    problems, outcomes = settle_counts(fuzz_daemon)
    assert not problems, (problems, outcomes)
    assert mqtt.tally.late == 0
