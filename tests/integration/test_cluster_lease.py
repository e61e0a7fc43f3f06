"""The leader lease and heartbeats on a real PostgreSQL (CONTRACT §8): one leader among racing nodes, a
follower takes over once the leader's lease lapses (not before), a graceful stop hands it over at once, a
leader cut from the store steps down before its lease expires, and with SQLite the one node always leads."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from ioc.cluster import ClusterNode, acquire, members
from ioc.cluster import node as cluster_node
from ioc.store import open_shared
from tests.postgres_server import Postgres
from tests.waiting import wait_until


def test_racing_nodes_elect_exactly_one(url: str) -> None:
    connections = [open_shared(url) for _ in range(6)]
    terms: list[int | None] = [None] * 6
    start = threading.Barrier(6)

    def race(n: int) -> None:
        start.wait()
        terms[n] = acquire(connections[n], f"n{n}", 30.0)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert terms.count(1) == 1 and terms.count(None) == 5, terms
    winner = terms.index(1)
    assert acquire(connections[winner], f"n{winner}", 30.0) == 1  # a renewal keeps the term
    assert acquire(connections[(winner + 1) % 6], f"n{(winner + 1) % 6}", 30.0) is None
    for db in connections:
        db.close()


def test_a_follower_leads_once_the_lease_lapses_and_the_old_leader_steps_down_first(url: str) -> None:
    db = open_shared(url)
    a = ClusterNode(db, "a", lease=1.5, version="t")
    b = ClusterNode(db, "b", lease=1.5, version="t")
    a.start()
    b.start()
    try:
        assert a.leader and not b.leader and a.role == "leader" and b.role == "follower"
        roster = {member.node: member for member in a.members()}
        assert set(roster) == {"a", "b"} and roster["a"].leader and not roster["b"].leader
        assert abs(roster["b"].heartbeat_at - time.time()) < 5
        # a stops renewing (as a frozen or killed process would): b must not lead while a's lease runs.
        a._stop.set()
        a._thread.join()  # type: ignore[union-attr]
        stopped = time.monotonic()
        wait_until("a steps down", lambda: not a.leader, timeout=5)
        assert not b.leader  # a's own step-down comes before the database's expiry
        wait_until("b leads", lambda: b.leader, timeout=10)
        took = time.monotonic() - stopped
        assert took >= 1.5 * 0.5, took  # not before the lapse (a renewed at most lease/3 before it stopped)
        assert b.term == 2
        assert [member.node for member in b.members() if member.leader] == ["b"]
    finally:
        b.close()
        a.close()
        db.close()


def test_a_graceful_stop_hands_the_lease_over_at_once(url: str) -> None:
    db = open_shared(url)
    a = ClusterNode(db, "a", lease=30.0)
    b = ClusterNode(db, "b", lease=3.0)
    roles: list[bool] = []
    b.on_role.append(roles.append)
    a.start()
    b.start()
    try:
        assert a.leader and not b.leader
        a.close()  # released: b leads at its next round (lease/3), not 30 s later
        wait_until("b leads", lambda: b.leader, timeout=10)
        assert roles == [True]
    finally:
        b.close()
        db.close()


def test_a_leader_cut_from_the_store_steps_down_and_is_not_ready(server: Postgres, url: str) -> None:
    db = open_shared(url)
    node = ClusterNode(db, "a", lease=1.5)
    roles: list[bool] = []
    node.on_role.append(roles.append)
    node.start()
    try:
        assert node.leader and node.problems() == []
        server.stop()
        wait_until("a steps down", lambda: not node.leader, timeout=10)
        wait_until("a is not ready", node.problems, timeout=15)
        assert node.problems()[0].startswith("store: cannot reach the shared store")
        wait_until("the listeners hear of it", lambda: roles == [True, False], timeout=5)
        server.start()
        wait_until("a leads again", lambda: node.leader, timeout=30)
        assert node.problems() == [] and roles == [True, False, True]
    finally:
        server.start()
        node.close()
        db.close()


def test_with_sqlite_the_one_node_always_leads(tmp_path: Any) -> None:
    db = open_shared(f"sqlite:///{tmp_path / 'ioc.db'}")
    node = ClusterNode(db, "solo", lease=1.0)
    node.start()
    assert node.leader and node.role == "leader" and node.problems() == []
    assert [(member.node, member.leader) for member in node.members()] == [("solo", True)]
    assert [sample.value for metric in node.metrics() for sample in metric.samples] == [1.0]
    node.close()
    db.close()


def test_the_roster_lists_every_node_with_its_heartbeat(url: str) -> None:
    db = open_shared(url, node="old", version="0.1")
    assert [(member.node, member.leader, member.role) for member in members(db, 10.0)] == [("old", False, "follower")]
    db.close()


def test_a_lock_held_on_the_lease_fails_the_renewal_in_time_and_the_leader_steps_down(url: str) -> None:
    """The lease's connection has statement_timeout and lock_timeout (lease / 5): a renewal stuck behind a
    lock (a hung PostgreSQL, as far as the node can tell) fails, and the node steps down and says so
    within its lease instead of hanging in the statement."""
    db = open_shared(url)
    node = ClusterNode(db, "a", lease=3.0)
    roles: list[bool] = []
    node.on_role.append(roles.append)
    node.start()
    blocker = psycopg.connect(url)  # not autocommit: the row lock is held until the rollback
    try:
        assert node.leader
        blocker.execute("SELECT * FROM cluster_lease WHERE name = 'leader' FOR UPDATE")
        locked = time.monotonic()
        wait_until("a steps down", lambda: roles == [True, False], timeout=15)
        assert time.monotonic() - locked < 3.0 + 1.5  # within its lease (it renewed at most lease/3 before)
        wait_until("a is not ready", node.problems, timeout=5)
        assert "timeout" in node.problems()[0], node.problems()
        blocker.rollback()
        wait_until("a leads again", lambda: node.leader, timeout=15)
        assert roles == [True, False, True] and node.problems() == []
    finally:
        blocker.close()
        node.close()
        db.close()


def test_the_roster_shows_silent_nodes_down_forgets_them_and_a_graceful_stop_leaves_at_once(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_node, "FORGET_EVERY", 0.2)
    db = open_shared(url)
    a = ClusterNode(db, "a", lease=1.5, forget_after=5.0)
    b = ClusterNode(db, "b", lease=1.5)
    c = ClusterNode(db, "c", lease=1.5)
    for node in (a, b, c):
        node.start()

    def roster() -> dict[str, str]:
        return {member.node: member.role for member in a.members()}

    try:
        assert roster() == {"a": "leader", "b": "follower", "c": "follower"}
        b._stop.set()  # b dies without a word: no heartbeat from now
        b._thread.join()  # type: ignore[union-attr]
        stopped = time.monotonic()
        wait_until("b down", lambda: roster() == {"a": "leader", "b": "down", "c": "follower"}, timeout=10)
        c.close()  # a graceful stop: out of the roster at once
        assert roster() == {"a": "leader", "b": "down"}
        wait_until("b forgotten", lambda: roster() == {"a": "leader"}, timeout=20)
        assert time.monotonic() - stopped >= 5.0 - 1.5 / 3  # not before forget_after (from its last heartbeat)
    finally:
        for node in (b, c, a):
            node.close()
        db.close()
