"""This daemon's place in the cluster: it heartbeats, takes or renews the leader lease every `lease / 3`,
and knows whether it leads (CONTRACT §8).

A leader that cannot renew (PostgreSQL gone, a cut, a hung statement) stops leading by its own clock
before the lease can expire in the database: the lease it last renewed runs until at least the moment the
renewal was *sent* plus `lease` (the database stamped it later), and the node stops believing it leads
`lease / 5` earlier than that. So two nodes never both lead, and `leader` is right even while the lease
thread is stuck in a statement. No statement on the lease's connection may take longer than `lease / 5`
(`statement_timeout`, `lock_timeout`): a hung server (a lock held on the lease's row) fails the round, the
node steps down in time and says so (`/readyz`). The leader forgets nodes silent for `forget_after`
(`GET /api/v1/cluster` shows them `down` after `lease`); a graceful stop leaves the roster at once.

While LISTEN/NOTIFY hears the other nodes' writes (`ioc.cluster.listen`), the daemon's store sync runs
only every SAFETY_SYNC seconds, as a safety net; while it does not, every second (`sync_due`).

With SQLite there is no cluster: the one node always leads, no thread runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from prometheus_client.core import Metric

from ioc.cluster.lease import Member, acquire, forget, heartbeat, leave, members, release
from ioc.metrics import gauge
from ioc.store import Database, StoreError

log = structlog.get_logger("ioc.cluster")

MARGIN = 0.2  # of the lease: how long before its expiry (by the renewal's send time) a leader steps down
FORGET_EVERY = 60.0  # seconds between the leader's prunings of the roster
SAFETY_SYNC = 30.0  # seconds between store syncs while LISTEN/NOTIFY hears every change (a safety net)


class ClusterNode:
    """The lease and heartbeat of node `node` on `database` (its own connection is opened, `reopen`).
    `on_role(leading)` listeners are told of each change of role, from the lease thread; `on_store_change
    (tables)` ones of the alerts and silences any node wrote (LISTEN/NOTIFY, `ioc.cluster.listen`)."""

    def __init__(self, database: Database, node: str, *, lease: float = 10.0, version: str = "",
                 forget_after: float = 86400.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.lease = lease
        self.version = version
        self.forget_after = forget_after
        self.clustered = database.dialect == "postgresql"
        self.on_role: list[Callable[[bool], None]] = []
        self.on_store_change: list[Callable[[set[str]], None]] = []
        self._listener: Any = None  # a ChangeListener once started
        self._clock = clock
        self._db = _lease_connection(database, lease) if self.clustered else None
        self._lock = threading.Lock()  # one connection, used by the lease thread and the API's reads
        self._valid_until = float("inf") if not self.clustered else 0.0
        self._leading = not self.clustered
        self.term: int | None = None
        self.store_error: str | None = None  # why the last heartbeat failed, None once it works
        self.elections = 0
        self._next_round = 0.0
        self._next_forget = 0.0
        self._next_sync = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def leader(self) -> bool:
        """Whether this node leads now (judged at each call: a lease not renewed in time has lapsed)."""
        return self._clock() < self._valid_until

    @property
    def role(self) -> str:
        return "leader" if self.leader else "follower"

    def start(self) -> None:
        """One round now (the first leader is known when the daemon starts), then one every `lease / 3`."""
        if not self.clustered:
            return
        from ioc.cluster.listen import ChangeListener  # psycopg only with PostgreSQL
        from ioc.store.postgres import PostgresDatabase

        assert isinstance(self._db, PostgresDatabase)
        self._listener = ChangeListener(self._db, self._store_changed)
        self._listener.start()
        self.step()
        self._thread = threading.Thread(target=self._run, name="cluster-lease", daemon=True)
        self._thread.start()

    def _store_changed(self, tables: set[str]) -> None:
        for listener in self.on_store_change:
            listener(tables)

    def _run(self) -> None:
        interval = self.lease / 3
        while True:
            # Wake at the lapse of a lease not renewed too, so the listeners hear of the step-down in time.
            wait = min(interval, max(0.05, self._valid_until - self._clock())) if self._leading else interval
            if self._stop.wait(wait):
                return
            if self._leading and not self.leader:
                self._changed(False, reason="lease not renewed in time")
            if self._clock() >= self._next_round:
                self.step()

    def step(self) -> None:
        """Heartbeat, then take or renew the lease; its outcome sets the role."""
        assert self._db is not None
        sent = self._clock()
        self._next_round = sent + self.lease / 3
        try:
            with self._lock:
                heartbeat(self._db, self.node, self.version)
                term = acquire(self._db, self.node, self.lease)
        except StoreError as error:
            if self.store_error is None:
                log.error("cluster.store_unreachable", node=self.node, error=str(error),
                          effect="leads no more once its lease lapses; ingests on")
            self.store_error = str(error)
            if self._leading and not self.leader:
                self._changed(False, reason="lease not renewed in time")
            return
        if self.store_error is not None:
            log.info("cluster.store_reachable", node=self.node)
            self.store_error = None
        if term is None:
            self._valid_until = 0.0
            if self._leading:
                self._changed(False, reason="another node holds the lease")
            return
        self._valid_until = sent + self.lease * (1 - MARGIN)
        self.term = term
        if not self._leading:
            self._changed(True, reason="lease taken")
        if self._clock() >= self._next_forget:
            self._next_forget = self._clock() + FORGET_EVERY
            self._forget()

    def _forget(self) -> None:
        """The leader drops the nodes silent for `forget_after` from the roster (a failure: the next time)."""
        assert self._db is not None
        try:
            with self._lock:
                gone = forget(self._db, self.forget_after)
        except StoreError as error:
            log.warning("cluster.forget_failed", error=str(error))
            return
        if gone:
            log.info("cluster.nodes_forgotten", nodes=gone, silent_for=self.forget_after)

    def _changed(self, leading: bool, *, reason: str) -> None:
        self._leading = leading
        if leading:
            self.elections += 1
        log.warning("cluster.role_changed", node=self.node, role="leader" if leading else "follower",
                    term=self.term, reason=reason)
        for listener in self.on_role:
            try:
                listener(leading)
            except Exception as error:  # noqa: BLE001 - a listener's failure must not stop the heartbeats
                log.error("cluster.listener_failed", error=repr(error))

    def members(self) -> list[Member]:
        """The roster (StoreError when the store does not answer); without a cluster, this node alone."""
        if self._db is None:
            return [Member(self.node, True, time.time())]
        with self._lock:
            return members(self._db, self.lease)

    def sync_due(self) -> bool:
        """Whether the periodic store sync (`AlertManager.sync`, the daemon's 1 s round) runs now: always
        while LISTEN/NOTIFY does not hear the other nodes' writes (not connected yet, or lost), only every
        SAFETY_SYNC seconds while it does (then it is a safety net: a change it missed). Never without a
        cluster."""
        if not self.clustered:
            return False
        now = self._clock()
        if self.listening and now < self._next_sync:
            return False
        self._next_sync = now + SAFETY_SYNC
        return True

    @property
    def listening(self) -> bool:
        """Whether LISTEN/NOTIFY is connected now (`ioc.cluster.listen`)."""
        return self._listener is not None and self._listener.listening

    def problems(self) -> list[str]:
        """Readiness: a node cut from the shared store is not ready (it ingests on, but leads nothing)."""
        if self.store_error is None:
            return []
        return [f"store: cannot reach the shared store: {self.store_error}"]

    def metrics(self) -> Iterable[Metric]:
        yield gauge("ioc_cluster_leader", "1 while this node is the cluster's leader (CONTRACT §8); always 1 "
                    "without a cluster (SQLite).", ("node",), {(self.node,): float(self.leader)})

    def close(self) -> None:
        """Stop the heartbeats; a leader gives the lease up, so another node leads at once."""
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        if self._db is None:
            return
        try:
            with self._lock:
                if self.leader:
                    release(self._db, self.node)
                leave(self._db, self.node)
        except StoreError as error:
            log.warning("cluster.release_failed", error=str(error),
                        effect="the lease lapses by itself; the roster shows the node down")
        self._valid_until = 0.0
        self._db.close()


def _lease_connection(database: Database, lease: float) -> Database:
    """The lease's own connection, on which no statement (nor its wait for a lock) may take longer than
    `lease * MARGIN` (at least 0.5 s): a hung PostgreSQL fails the round in time, so the node steps down
    and tells it, instead of hanging in a statement past its lease."""
    from ioc.store.postgres import PostgresDatabase  # psycopg only with PostgreSQL

    if isinstance(database, PostgresDatabase):
        return database.reopen(timeout=max(0.5, lease * MARGIN))
    return database.reopen()
