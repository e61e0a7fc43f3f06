"""Fixtures of the integration tests that stop or restart PostgreSQL (the cluster and outage tests)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres_server import Postgres, start_postgres


@pytest.fixture(scope="module")
def server() -> Iterator[Postgres]:
    """A PostgreSQL of the module's own, apart from the session's (`postgres`): its tests stop it."""
    postgres = start_postgres()
    yield postgres
    postgres.close()


@pytest.fixture
def url(server: Postgres) -> str:
    """A fresh database on the module's server, started again if a test before stopped it."""
    server.start()
    return server.new_database()
