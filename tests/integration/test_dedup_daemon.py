"""The daemon keeps its dedup keys in their own SQLite file (`ioc.dedup.db` beside `[store] path`), off
the store file whose write lock the alert path takes, and still knows them after a restart."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import orjson

from ioc.app import Daemon
from ioc.config import Settings
from tests.servers import free_port


def settings(store: Path) -> Settings:
    return Settings.model_validate({
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "mqtt": {"enabled": False},
        "influx": {"url": ""},  # the local sink: points in the store, durable when written
        "store": {"path": str(store)},
    })


def event(event_id: str) -> bytes:
    return orjson.dumps({"id": event_id, "source": "qtmt-aqi", "type": "telemetry",
                         "time": datetime.now(UTC).isoformat(), "metric": "env.aqi", "value": 42.0})


def start(store: Path) -> Daemon:
    daemon = Daemon(settings(store))
    daemon.evaluator.start()  # what is accepted is evaluated, so the shutdown does not wait for it
    return daemon


def stop(daemon: Daemon) -> None:
    daemon.dedup.persist()  # what the housekeeping does every second and the shutdown once more
    daemon._close()


def test_keys_live_in_their_own_file_and_survive_a_restart(tmp_path: Path) -> None:
    store = tmp_path / "var" / "ioc.db"
    first = start(store)
    try:
        assert first.pipeline.ingest(event("e-1")).accepted == 1
    finally:
        stop(first)

    keys = sqlite3.connect(tmp_path / "var" / "ioc.dedup.db")
    assert keys.execute("SELECT count(*) FROM dedup").fetchone() == (1,)
    keys.close()
    shared = sqlite3.connect(store)
    assert shared.execute("SELECT name FROM sqlite_master WHERE name = 'dedup'").fetchall() == []
    shared.close()

    again = start(store)
    try:
        assert again.pipeline.ingest(event("e-1")).duplicates == 1
        assert again.pipeline.ingest(event("e-2")).accepted == 1
    finally:
        stop(again)
