"""A cluster's HTTP republish the broker refuses is not taken as done (issue 11).

paho counts a QoS 1 publish as published once any PUBACK came, even one whose MQTT 5 reason code says the
broker refused it (Mosquitto's ACL: 0x87 not authorized). The republish would then answer `202` for an
event the other nodes never see. Against a real Mosquitto with an ACL that denies the daemon's user the
events topics, the republish fails (the HTTP intake answers `503`), the session counts and remembers the
refusal; with the ACL granting it, the same republish succeeds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from ioc.connectors.mqtt.session import MqttSession

from ioc.api.cluster import Republisher
from ioc.config import MqttSettings
from ioc.envelope import EVENT_ADAPTER
from ioc.ingest.decode import Accepted
from ioc.mosquitto_acl import render_password_file
from tests.servers import Server, start_mosquitto
from tests.waiting import wait_until

USER, PASSWORD = "ioc", "daemon-secret"


class Quiet:
    """A receiver for a session that subscribes to nothing it is sent."""

    def on_raw_message(self, topic: bytes, payload: bytes, mid: int, qos: int) -> None: ...

    def on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None: ...

    def on_session(self, present: bool) -> None: ...


def broker(folder: Path, acl: str) -> Server:
    folder.mkdir(parents=True)
    (folder / "passwords").write_text(render_password_file({USER: PASSWORD}))
    (folder / "acl").write_text(acl)
    for name in ("passwords", "acl"):
        (folder / name).chmod(0o600)
    return start_mosquitto(folder / "data", password_file=folder / "passwords", acl_file=folder / "acl")


@pytest.fixture
def session_to() -> Iterator:
    sessions: list[MqttSession] = []

    def connect(port: int) -> MqttSession:
        session = MqttSession(MqttSettings(url=f"mqtt://127.0.0.1:{port}", client_id="ioc-a", username=USER,
                                           password=PASSWORD, protocol="5", subscribe=["ioc/v1/nothing"]))
        sessions.append(session)
        session.start(Quiet())
        wait_until("the session connected", lambda: session.connected, 15, explain=session.problems)
        return session

    yield connect
    for session in sessions:
        session.close()


def accepted(number: int) -> Accepted:
    raw = orjson.dumps({"id": f"r{number}", "source": "qtmt-aqi", "time": "2026-03-02T08:00:00+07:00",
                        "type": "telemetry", "metric": "env.aqi", "value": 50})
    return Accepted(EVENT_ADAPTER.validate_json(raw), raw)


@pytest.mark.parametrize("granted", [False, True], ids=["denied", "granted"])
def test_a_republish_the_broker_refuses_fails(tmp_path: Path, session_to, granted: bool) -> None:
    rights = "topic readwrite ioc/v1/events/#" if granted else "topic read ioc/v1/events/#"
    server = broker(tmp_path / "broker", f"user {USER}\n{rights}\ntopic read ioc/v1/nothing\n")
    try:
        session = session_to(server.port)
        republisher = Republisher(session)
        ok = asyncio.run(republisher.publish([accepted(1), accepted(2)], timeout=10.0))
        families = {family.name: family for family in [*republisher.metrics(), *session.collect()]}
        refused = families["ioc_mqtt_publishes_refused"].samples[0].value
        outcomes = {s.labels["outcome"]: s.value for s in families["ioc_cluster_republished"].samples
                    if s.name.endswith("_total")}
        if granted:
            assert ok and refused == 0 and outcomes == {"published": 2, "failed": 0}
        else:
            assert not ok and refused == 1 and outcomes == {"published": 0, "failed": 2}  # one message: an array
            assert all("authori" in reason.lower() for reason, _ in session.refusals.by_mid.values())
    finally:
        server.stop()
