"""The two-node world of the cluster e2e tests (CONTRACT §8): two `ioc run` nodes, `ioc-a` and `ioc-b`, on one
PostgreSQL database, the session's Mosquitto and InfluxDB, with the aqi rule (public: in the CAP feed too)
and, if given, a webhook.

`two_nodes()` builds the nodes (not started: a test chooses the order; the first started leads) as
{node: (DaemonProcess, env)}, `env` being what each start of that node needs (its store URL and node name).
The fixtures `nodes` (with the webhook of the fixture `receiver`) and `receiver` reach every module of
tests/e2e through tests/e2e/conftest.py. `roster`, `role`, `leader` read a node's view of the cluster;
`notified` counts the alert changes told on the broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.daemon import VENDOR_TOKEN, DaemonProcess, make_daemon
from tests.e2e.test_alertmanager_push import Receiver
from tests.e2e.test_postgres_store import RULES
from tests.mqtt_tools import Collector
from tests.postgres_server import Postgres
from tests.servers import Server

LEASE = 3.0
VENDOR = {"Authorization": f"Bearer {VENDOR_TOKEN}", "Content-Type": "application/json"}

Node = tuple[DaemonProcess, dict[str, str]]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver recording every call."""
    found = Receiver()
    yield found
    found.close()


@pytest.fixture
def nodes(tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, unique: str,
          postgres: Postgres, receiver: Receiver) -> Iterator[dict[str, Node]]:
    """Two nodes (not started) on a fresh database of the session's PostgreSQL, calling `receiver`; killed
    at the end."""
    found = two_nodes(tmp_path, mosquitto, influxdb, database, unique, postgres, webhook=receiver.url)
    yield found
    for daemon, _ in found.values():
        daemon.stop()


def two_nodes(tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, unique: str,
              postgres: Postgres, *, webhook: str = "", extra: str = "") -> dict[str, Node]:
    """`ioc-a` and `ioc-b` on a fresh database of `postgres`, writing to InfluxDB's `database`; `extra` is
    added to each node's config."""
    url = postgres.new_database("e2e")
    found: dict[str, Node] = {}
    for node in ("ioc-a", "ioc-b"):
        folder = tmp_path / node
        folder.mkdir()
        rules = folder / "rules.yaml"
        rules.write_text(RULES + "    public: true\n", encoding="utf-8")  # its alerts in the CAP feed too
        daemon = make_daemon(folder, mqtt_url=mosquitto.url, influx_url=influxdb.url, database=database,
                             client_id=f"{node}-{unique}",
                             extra=f'\n[cluster]\nlease = "{LEASE:g}s"\n\n[rules]\npaths = ["{rules}"]\n'
                             + (f'\n[[alerts.webhooks]]\nurl = "{webhook}"\n' if webhook else "") + extra)
        found[node] = (daemon, {"IOC_STORE__URL": url, "IOC_CLUSTER__NODE": node})
    return found


def roster(daemon: DaemonProcess) -> dict[str, str]:
    """{node: role} as `GET /api/v1/cluster` on `daemon` lists them."""
    response = httpx.get(f"{daemon.api}/api/v1/cluster", timeout=5)
    assert response.status_code == 200, response.text
    return {node["node"]: node["role"] for node in response.json()["nodes"]}


def role(daemon: DaemonProcess) -> str:
    """The role `/readyz` names."""
    return str(httpx.get(f"{daemon.api}/readyz", timeout=5).json()["role"])


def leader(*daemons: DaemonProcess) -> DaemonProcess | None:
    return next((daemon for daemon in daemons if role(daemon) == "leader"), None)


def notified(collector: Collector) -> dict[tuple[str, str], int]:
    """(alert id, change) -> how many distinct notification ids told it on the broker."""
    ids: dict[tuple[str, str], set[str]] = {}
    for _, payload in list(collector.messages):
        body = orjson.loads(payload)
        ids.setdefault((body["id"], body["change"]), set()).add(body.get("notification_id", ""))
    return {key: len(found) for key, found in ids.items()}
