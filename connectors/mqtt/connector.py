"""The MQTT connector: events from `ioc/v1/events/{source}` into the intake, dead letters and alerts out.

Three parts, each one job, assembled by the daemon (ioc/app.py) with constructor arguments:

    session = MqttSession(settings.mqtt)                 # connection, reconnects, subscriptions, acks
    publisher = MqttPublisher(session)                   # dead letters, alerts, retained alert state
    pipeline = Pipeline(..., dead_letters=[publisher])
    connector = MqttConnector(session, pipeline, publisher=publisher, vendors=...)   # the intake

`MqttConnector` is what the daemon starts and stops: its `MqttIntake` (bursts, manual ack once durable,
poison and rate limits) receives on the session; readiness and metrics are the three parts' together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain
from pathlib import Path

from ioc.connectors.mqtt.echoes import Echoes
from ioc.connectors.mqtt.intake import MqttIntake
from ioc.connectors.mqtt.publisher import MqttPublisher
from ioc.connectors.mqtt.session import MqttSession
from prometheus_client.core import Metric

from ioc.config import VendorSettings
from ioc.ingest.port import Intake
from ioc.metrics import MetricSource


class MqttConnector:
    """Starts and stops the MQTT intake on `session`; `publisher` (if any) is flushed at close."""

    def __init__(self, session: MqttSession, intake: Intake, *, publisher: MqttPublisher | None = None,
                 vendors: Sequence[VendorSettings] = (), state_path: str | Path | None = None,
                 max_deliveries: int = 3, echoes: Echoes | None = None) -> None:
        """`vendors`: whose `rate` holds on MQTT. `state_path`: the daemon's store, for the poison guard
        (quarantine after `max_deliveries` crashes); without it (tests) there is no such guard. `echoes`:
        in a cluster on MQTT 3.1.1, this node's own HTTP republish, recognised when it comes back."""
        self.session = session
        self.publisher = publisher
        self.intake = MqttIntake(session, intake, vendors=vendors, state_path=state_path,
                                 max_deliveries=max_deliveries, echoes=echoes)
        self.name = session.name
        self.url = session.url

    def start(self) -> None:
        """Connect in the background (returns at once); also restarts after `close()` (same client id:
        the persistent session resumes)."""
        self.intake.start()
        self.session.start(self.intake)

    def pause_intake(self) -> None:
        """Stop processing messages (neither handed over nor acknowledged: redelivered after a restart);
        acknowledgements of earlier messages still go out."""
        self.intake.pause()

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (acknowledgements, publishes) for up to `timeout` seconds, then DISCONNECT
        (the session stays on the broker). Safe to call twice."""
        publisher = self.publisher
        self.session.close(timeout, busy=(lambda: publisher.pending() > 0) if publisher is not None else (lambda: False))
        self.intake.stop()

    @property
    def connected(self) -> bool:
        return self.session.connected

    @property
    def subscribed(self) -> bool:
        return self.session.subscribed

    def problems(self) -> list[str]:
        """Failing readiness checks (for `/readyz`)."""
        return self.session.problems()

    def metrics(self) -> MetricSource:
        """The connector's metric families (`ioc_mqtt_*`), built at scrape time."""
        return self._collect

    def _collect(self) -> Iterable[Metric]:
        parts = [self.session.collect(), self.intake.collect()]
        if self.publisher is not None:
            parts.append(self.publisher.collect())
        return chain.from_iterable(parts)
