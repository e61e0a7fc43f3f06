"""The two-node world of the cluster e2e tests (CONTRACT §8): two `ioc run` nodes, `ioc-a` and `ioc-b`, on one
PostgreSQL database, the session's Mosquitto and InfluxDB, with the aqi rule (public: in the CAP feed too)
and, if given, a webhook.

`two_nodes()` builds the nodes (not started: a test chooses the order; the first started leads) as
{node: (DaemonProcess, env)}, `env` being what each start of that node needs (its store URL and node name).
The fixtures `nodes` (with the webhook of the fixture `receiver`) and `receiver` reach every module of
tests/e2e through tests/e2e/conftest.py. `roster`, `role`, `leader` read a node's view of the cluster;
`notified` counts the alert changes told on the broker; `StreamTap` keeps the alert changes of a node's SSE
stream.

`World` is what a test of one daemon talks to, so that it can run on one node or two (issue 11: a
representative set of the e2e tests runs on two nodes, docs/operations.md lists them): a module gives a
module-scoped `cluster` fixture (`yield from running_cluster(...)`, one two-node world per module) and a `world`
fixture parametrised `one` / `two` (`world_of(request, database)`) next to its `daemon` fixture.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.daemon import RULE_FILE, VENDOR_TOKEN, DaemonProcess, make_daemon
from tests.e2e.webhook import Receiver
from tests.mqtt_tools import Collector
from tests.postgres_server import Postgres
from tests.servers import Server

RULES = """\
rules:
  - id: aqi-bad
    kind: threshold
    severity: critical
    match: {type: telemetry, metric: env.aqi}
    group_by: [area]
    op: ">="
    threshold: 151
    clear: 120
"""
LEASE = 3.0
VENDOR = {"Authorization": f"Bearer {VENDOR_TOKEN}", "Content-Type": "application/json"}

PUBLIC_RULES = RULES + "    public: true\n"  # the aqi rule, its alerts in the CAP feed too

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
              postgres: Postgres, *, webhook: str = "", extra: str = "", rules: str | None = PUBLIC_RULES
              ) -> dict[str, Node]:
    """`ioc-a` and `ioc-b` on a fresh database of `postgres`, writing to InfluxDB's `database`, with the
    rule file `rules` (None: the shipped rule packs); `extra` is added to each node's config. Each node's
    `env` is also its DaemonProcess's, so a plain `start()` starts it as that node."""
    url = postgres.new_database("e2e")
    found: dict[str, Node] = {}
    for node in ("ioc-a", "ioc-b"):
        folder = tmp_path / node
        folder.mkdir()
        daemon = make_daemon(folder, mqtt_url=mosquitto.url, influx_url=influxdb.url, database=database,
                             client_id=f"{node}-{unique}", rules=rules,
                             extra=f'\n[cluster]\nlease = "{LEASE:g}s"\n'
                             + (f'\n[[alerts.webhooks]]\nurl = "{webhook}"\n' if webhook else "") + extra)
        daemon.env = {"IOC_STORE__URL": url, "IOC_CLUSTER__NODE": node}
        found[node] = (daemon, daemon.env)
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


def rule_file(daemon: DaemonProcess) -> Path:
    """The rule file of a daemon made with `rules` (make_daemon's, or a node of `two_nodes`)."""
    return daemon.config.parent / RULE_FILE


@dataclass(frozen=True)
class World:
    """The daemon or daemons a test of `ioc run` talks to, for tests parametrised `one` / `two` (issue 11:
    two nodes on one PostgreSQL behave as one daemon).

    `writer` takes what the test changes (events posted over HTTP, acks, silences, amtool's changes),
    `reader` serves what it checks; `nodes` are every node (checks that must hold on each: the counting
    rule, the alert on each node's API and stream). With one node both are the daemon. With two, the
    writer is the follower `ioc-b` (what it takes must reach the leader: the HTTP republish through the
    broker, the operators' changes through PostgreSQL's LISTEN/NOTIFY) and the reader the leader `ioc-a`.
    `database` is the InfluxDB database the nodes write to."""

    nodes: tuple[DaemonProcess, ...]
    database: str

    @property
    def writer(self) -> DaemonProcess:
        return self.nodes[-1]

    @property
    def reader(self) -> DaemonProcess:
        return self.nodes[0]

    @property
    def clustered(self) -> bool:
        return len(self.nodes) > 1


def running_cluster(tmp_path: Path, mosquitto: Server, influxdb: Server, postgres: Postgres, *,
                    rules: str | None = PUBLIC_RULES, extra: str = "") -> Iterator[World]:
    """A two-node World on its own InfluxDB and PostgreSQL databases, started (`ioc-a` leads), killed after:
    the body of a fixture (`yield from running_cluster(...)`), module-scoped where the tests allow: one world
    per module."""
    unique = uuid.uuid4().hex[:8]
    found = two_nodes(tmp_path, mosquitto, influxdb, f"t_{unique}", unique, postgres, rules=rules, extra=extra)
    daemons = tuple(daemon for daemon, _ in found.values())
    try:
        for daemon in daemons:  # in order: the first leads
            daemon.start()
        assert [role(daemon) for daemon in daemons] == ["leader", "follower"]
        yield World(daemons, f"t_{unique}")
    finally:
        for daemon in daemons:
            daemon.stop()


def world_of(request: pytest.FixtureRequest, database: str) -> World:
    """The body of a module's `world` fixture (params `one`, `two`): its `daemon` fixture alone, or its
    module-scoped `cluster` fixture."""
    if request.param == "one":
        return World((request.getfixturevalue("daemon"),), database)
    found: World = request.getfixturevalue("cluster")
    return found


class StreamTap:
    """Reads a node's `GET /api/v1/stream` in a thread and keeps the (alert id, change) of its alert events."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.changes: list[tuple[str, str]] = []
        self._client = httpx.Client(timeout=httpx.Timeout(5.0, read=None))
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(f"{daemon.api}/api/v1/stream",), daemon=True)
        self._thread.start()
        if not self._opened.wait(10):
            raise AssertionError(f"no stream from {daemon.api}")

    def _read(self, url: str) -> None:
        try:
            with self._client.stream("GET", url) as response:
                self._opened.set()
                event = ""
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line.removeprefix("event:").strip()
                    elif line.startswith("data:") and event == "alert":
                        body = orjson.loads(line.removeprefix("data:"))
                        self.changes.append((body["id"], body["change"]))
                    elif not line:
                        event = ""
        except (httpx.HTTPError, RuntimeError):
            return  # closed by close(), or the daemon went away: a test then finds the changes it lacks

    def of(self, alert_id: str) -> list[str]:
        """The changes of one alert, in order."""
        return [change for found, change in list(self.changes) if found == alert_id]

    def close(self) -> None:
        self._client.close()
        self._thread.join(5)
