"""A two-node world (issue 11, docs/operations.md "A cluster"): two `ioc run` nodes on one PostgreSQL, one
Mosquitto and one InfluxDB, and the cluster's faults.

    generator ──MQTT──> Mosquitto ──> ioc-a, ioc-b ──> InfluxDB (both write every point: stored once)
    generator ──HTTP──> ioc-a or ioc-b ──> Mosquitto (the node republishes what it took: both get it)
                        ioc-a, ioc-b <──> PostgreSQL (the lease, alerts, outbox); the leader ──> webhooks

Each node has its own MQTT session (`chaos-ioc-a`, `chaos-ioc-b`), its own node-local store and log, the
same rules and webhook. The daemons reach the servers directly (the one-node world's fault proxies test
the links; this world tests what a second node adds).

The nemesis's kinds (`ClusterNemesis.kinds`), each healed (PostgreSQL up, both nodes up, a leader) before
the next:
- `kill-leader`: SIGKILL of the leader at a random moment; the other must lead within `lease + 5 s`
  (CONTRACT §8); the dead node is started again after a random pause (it comes back as a follower).
- `postgres-restart`: PostgreSQL stopped (fast shutdown) for longer than the lease, so nobody may lead
  (a node still leading then is a problem), and started again: a leader must come back.
- `node-restart`: one node, either role, stopped gracefully (SIGTERM must exit 0: a leader gives its lease
  up) and started again.

Every moment nobody leads (from the kill or stop until a leader is seen) is recorded in `leaderless`: the
alert check (`checker.check_alerts`) does not count a change made then as lost when the next leader
folds it into what its engine holds (docs/operations.md: it records what changed meanwhile).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import httpx

from tests.chaos.nemesis import Injection
from tests.chaos.world import RULES, Node, WebhookReceiver, daemon_config
from tests.e2e.daemon import DaemonProcess
from tests.postgres_server import Postgres, start_postgres
from tests.servers import Server, free_port, start_influxdb, start_mosquitto

LEASE = 3.0  # [cluster] lease, seconds: short, so a failover fits the short profile (e2e uses the same)
NODES = ("ioc-a", "ioc-b")


class ClusterWorld:
    def __init__(self, workdir: Path, mosquitto: Server, influxdb: Server, postgres: Postgres,
                 webhook: WebhookReceiver, nodes: list[Node], *, lease: float = LEASE) -> None:
        self.workdir = workdir
        self.mosquitto = mosquitto
        self.influxdb = influxdb
        self.postgres = postgres
        self.webhook = webhook
        self.nodes = nodes
        self.lease = lease

    @classmethod
    def start(cls, workdir: Path, *, lease: float = LEASE) -> ClusterWorld:
        workdir.mkdir(parents=True, exist_ok=True)
        mosquitto = start_mosquitto(workdir / "mosquitto")
        influxdb = start_influxdb(workdir / "influxdb")
        postgres = start_postgres()
        store_url = postgres.new_database("chaos")
        webhook = WebhookReceiver()
        rules = workdir / "rules.yaml"
        rules.write_text(RULES, encoding="utf-8")
        nodes = []
        for name in NODES:
            folder = workdir / name
            folder.mkdir(parents=True, exist_ok=True)
            http_port = free_port()
            config = folder / "ioc.toml"
            config.write_text(daemon_config(http_port=http_port, mqtt_port=mosquitto.port,
                                            influx_port=influxdb.port, store=folder / "var" / "ioc.db",
                                            rules=rules, webhook_url=webhook.url, client_id=f"chaos-{name}",
                                            extra=f'\n[cluster]\nlease = "{lease:g}s"\n'), encoding="utf-8")
            daemon = DaemonProcess(config, http_port, folder / "ioc.log")
            nodes.append(Node(name, daemon, {"IOC_STORE__URL": store_url, "IOC_CLUSTER__NODE": name}))
        world = cls(workdir, mosquitto, influxdb, postgres, webhook, nodes, lease=lease)
        for node in nodes:  # one after the other: the first leads
            node.start_daemon()
        world.wait_leader(lease + 30)
        return world

    @property
    def apis(self) -> list[str]:
        return [node.daemon.api for node in self.nodes]

    def set_doing(self, doing: str) -> None:
        for node in self.nodes:
            node.doing = doing

    # --- roles ---------------------------------------------------------------------------------------

    @staticmethod
    def role(node: Node) -> str | None:
        """What the node's `/readyz` says it is (it answers 503 when cut from PostgreSQL, with its role);
        None when it does not answer."""
        if not node.daemon_running():
            return None
        try:
            return httpx.get(f"{node.daemon.api}/readyz", timeout=2).json().get("role")
        except (httpx.HTTPError, ValueError):
            return None

    def leaders(self, among: list[Node] | None = None) -> list[Node]:
        return [node for node in (among or self.nodes) if self.role(node) == "leader"]

    def wait_leader(self, timeout: float, among: list[Node] | None = None) -> tuple[Node | None, float]:
        """The first node (of `among`) seen leading within `timeout`, and the seconds it took."""
        started = time.monotonic()
        while (took := time.monotonic() - started) < timeout:
            found = self.leaders(among)
            if found:
                return found[0], took
            time.sleep(0.1)
        return None, took

    # --- healing -------------------------------------------------------------------------------------

    def heal(self) -> None:
        """PostgreSQL up, both nodes up without failpoints, and a leader (the alert check needs one)."""
        self.postgres.start()
        for node in self.nodes:
            if node.failpoints or not node.daemon_running():
                node.kill_daemon()
                node.start_daemon()
        self.wait_leader(self.lease + 30)

    def close(self) -> None:
        for node in self.nodes:
            node.stop_for_good()
        self.webhook.close()
        self.mosquitto.stop()
        self.influxdb.stop()
        self.postgres.close()


class ClusterNemesis:
    def __init__(self, world: ClusterWorld, rng: random.Random, *, hold: tuple[float, float] = (1.5, 3.0)) -> None:
        self.world = world
        self.rng = rng
        self.hold = hold
        self.leaderless: list[tuple[float, float]] = []  # (from, to), monotonic: nobody led

    @staticmethod
    def kinds() -> list[str]:
        """The kinds of one round: the leader is killed twice (issue 11: several times)."""
        return ["kill-leader", "kill-leader", "postgres-restart", "node-restart"]

    def inject(self, kind: str) -> Injection:
        injection = Injection(kind, time.monotonic())
        handler = {"kill-leader": self._kill_leader, "postgres-restart": self._postgres_restart,
                   "node-restart": self._node_restart}[kind]
        try:
            handler(injection)
        except Exception as error:  # noqa: BLE001 - e.g. a node did not come back: recorded, healed
            injection.problems.append(f"{kind}: {type(error).__name__}: {error}"[:2000])
        injection.healed = time.monotonic()
        return injection

    def annotate(self, injections: list[Injection]) -> None:
        """Nothing to add after the run: each detail is complete when the fault is healed."""

    def _pause(self, low: float, high: float) -> float:
        seconds = self.rng.uniform(low, high)
        time.sleep(seconds)
        return seconds

    def _leader(self, injection: Injection) -> Node | None:
        leader, _ = self.world.wait_leader(self.world.lease + 30)
        if leader is None:
            injection.problems.append(f"{injection.kind}: no node leads before the fault")
        return leader

    def _failover(self, injection: Injection, gone: Node, since: float) -> str:
        """Wait for another node to lead (after `gone` died or stopped at `since`); the record, and a
        problem past `lease + 5 s` (CONTRACT §8)."""
        world = self.world
        others = [node for node in world.nodes if node is not gone]
        limit = world.lease + 5
        new, _ = world.wait_leader(limit + 20, among=others)
        took = time.monotonic() - since
        self.leaderless.append((since, time.monotonic()))
        if new is None:
            injection.problems.append(f"{injection.kind}: nobody led {took:.0f}s after {gone.name} went")
            return "nobody led"
        if took > limit:
            injection.problems.append(f"{injection.kind}: {new.name} led {took:.1f}s after {gone.name} went, "
                                      f"over lease + 5 s = {limit:g}s")
        return f"{new.name} led after {took:.1f}s"

    def _kill_leader(self, injection: Injection) -> None:
        leader = self._leader(injection)
        if leader is None:
            return
        after = self._pause(0.0, 1.5)
        status = leader.kill_daemon()
        failover = self._failover(injection, leader, time.monotonic())
        down = self._pause(0.1, 1.5)
        leader.start_daemon()
        injection.detail = (f"SIGKILL of the leader {leader.name} after {after:.1f}s (status {status}); "
                            f"{failover}; {leader.name} down {down:.1f}s more")

    def _postgres_restart(self, injection: Injection) -> None:
        world = self.world
        world.postgres.stop()
        stopped = time.monotonic()
        # Longer than the lease: the leader cannot renew, so it must have stopped leading by then.
        down = self._pause(world.lease + 1.0, world.lease + 1.0 + self.hold[1])
        still = [node.name for node in world.leaders()]
        if still:
            injection.problems.append(f"postgres-restart: {still} still leading {down:.1f}s after PostgreSQL "
                                      f"stopped (lease {world.lease:g}s)")
        world.postgres.start()
        restarted = time.monotonic()
        leader, took = world.wait_leader(world.lease + 30)
        self.leaderless.append((stopped, time.monotonic()))
        if leader is None:
            injection.problems.append(f"postgres-restart: nobody leads {took:.0f}s after PostgreSQL returned")
        injection.detail = (f"PostgreSQL down {restarted - stopped:.1f}s (leading at its end: {still or 'nobody'}); "
                            + (f"{leader.name} led {took:.1f}s after its start" if leader else "no leader"))

    def _node_restart(self, injection: Injection) -> None:
        world = self.world
        node = self.rng.choice(world.nodes)
        role = world.role(node)
        stopped = time.monotonic()
        status = node.terminate_daemon()
        if status != 0:
            injection.problems.append(f"node-restart: SIGTERM of {node.name} exited {status}, not 0")
        failover = self._failover(injection, node, stopped) if role == "leader" else "the leader stayed"
        down = self._pause(0.1, 1.5)
        node.start_daemon()
        injection.detail = f"{node.name} ({role}) stopped (SIGTERM exit {status}); {failover}; down {down:.1f}s"
