"""The PostgreSQL fixture itself: a real server, SQL round trip, an outage and its data kept."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres_server import Postgres, start_postgres


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    server = start_postgres()
    yield server
    server.close()


def test_a_table_survives_a_stop_and_start(postgres: Postgres) -> None:
    postgres.psql("CREATE TABLE fixture_check (id int PRIMARY KEY, name text)")
    postgres.psql("INSERT INTO fixture_check VALUES (1, 'Lâm Đồng')")
    postgres.stop()
    with pytest.raises(RuntimeError):
        postgres.psql("SELECT 1")
    postgres.start()
    assert postgres.psql("SELECT name FROM fixture_check WHERE id = 1") == "Lâm Đồng"
    assert postgres.psql("SHOW server_version").startswith("15")
