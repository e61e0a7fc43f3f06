"""Shared fixtures: real servers started once per session on free loopback ports, and stopped."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.postgres_server import Postgres, start_postgres
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


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL for the session (skips when it is not installed); a test gets a database of its own
    from `store_url`, or starts its own server when it stops this one."""
    server = start_postgres()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The shared store (`[store] url`) of a test, on each backend: a SQLite file in tmp_path, or a fresh
    database (`CREATE DATABASE t_<unique>`) on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ioc.db'}"
    server: Postgres = request.getfixturevalue("postgres")
    return server.new_database()


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
