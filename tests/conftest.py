"""Shared fixtures: real servers started once per session on free loopback ports, and stopped."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.servers import Server, start_influxdb, start_mosquitto, start_victoria_metrics


@pytest.fixture(autouse=True, scope="session")
def _uncached_logging() -> None:
    # Tests capture logs; a cached logger would keep the first configuration.
    structlog.configure(cache_logger_on_first_use=False)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_influxdb(tmp_path_factory.mktemp("influxdb"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_victoria_metrics(tmp_path_factory.mktemp("victoria"))
    yield server
    server.stop()


@pytest.fixture
def database() -> str:
    """A fresh InfluxDB database name per test, so tests never see each other's points."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def unique() -> str:
    """A short unique token for topics, sources and ids in one test."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[Server]:
    """A broker of this test's own, for tests that stop or restart it."""
    server = start_mosquitto(tmp_path / "mosquitto")
    yield server
    server.stop()


@pytest.fixture
def private_influxdb(tmp_path: Path) -> Iterator[Server]:
    """An InfluxDB of this test's own, for outage tests."""
    server = start_influxdb(tmp_path / "influxdb")
    yield server
    server.stop()
