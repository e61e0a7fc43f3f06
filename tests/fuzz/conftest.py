"""Fixtures of the fuzz tests: one `ioc run` per test module, on the session's Mosquitto and InfluxDB."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.e2e.daemon import DaemonProcess
from tests.fuzz.harness import make_daemon, seed_daemon
from tests.fuzz.routes import Known
from tests.servers import Server

# `IOC_FUZZ_SCALE=10 pytest tests/fuzz` runs ten times the short profile's cases.
SCALE = float(os.environ.get("IOC_FUZZ_SCALE", "1"))


def short(examples: int) -> settings:
    """The `fuzz-short` profile with `examples` cases (times IOC_FUZZ_SCALE), usable as a decorator."""
    return settings(settings.get_profile("fuzz-short"), max_examples=max(1, round(examples * SCALE)))


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory, mosquitto: Server, influxdb: Server
                ) -> Iterator[DaemonProcess]:
    name = uuid.uuid4().hex[:8]
    daemon = make_daemon(tmp_path_factory.mktemp(f"fuzz-{name}"), mqtt_url=mosquitto.url, influx_url=influxdb.url,
                         name=name)
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def known(fuzz_daemon: DaemonProcess) -> Known:
    """Real alert and silence ids and the tokens, learned from the seeded daemon."""
    found = Known()
    seed_daemon(fuzz_daemon, found)
    return found
