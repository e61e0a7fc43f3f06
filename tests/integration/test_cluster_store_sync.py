"""Hearing the other nodes on a real PostgreSQL (CONTRACT §8: an ack made on any node holds on all of them
within a second), wired as the daemon wires it: LISTEN/NOTIFY tells a node of the other's writes, and the
daemon's 1 s round syncs from the store only when `ClusterNode.sync_due` says so: while LISTEN hears, every
SAFETY_SYNC (30 s) as a safety net; while it is cut, every round."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from ioc.rules.updates import AlertUpdate

from ioc.alerts.manager import AlertManager
from ioc.alerts.store import AlertStore
from ioc.cluster import ClusterNode
from ioc.store import StoreError, open_shared
from tests.doubles import RecordingHook
from tests.waiting import wait_until


class Node:
    """A cluster node and its alert manager, with the daemon's 1 s round (`Daemon._maintain`)."""

    def __init__(self, url: str, name: str) -> None:
        self.db = open_shared(url, node=name)
        self.cluster = ClusterNode(self.db, name, lease=3.0)
        self.hook = RecordingHook()
        self.alerts = AlertManager(AlertStore(url, node=name), notifiers=[self.hook],
                                   leader=lambda: self.cluster.leader)
        self.cluster.on_store_change.append(self.alerts.store_changed)
        # As the daemon does (`ioc.alerts.leadership`): a node that wins the lease takes the outbox over.
        self.cluster.on_role.append(lambda leading: leading and self.alerts.promote(self.cluster.term or 0))
        self.syncs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._rounds, daemon=True)

    def start(self) -> None:
        self.cluster.start()
        self._thread.start()

    def _rounds(self) -> None:
        while not self._stop.wait(1.0):
            if self.cluster.sync_due():
                self.syncs += 1
                try:
                    self.alerts.sync()
                except StoreError:
                    pass

    def acked_by(self, alert_id: str) -> str | None:
        ack = self.alerts.get(alert_id).acknowledged
        return None if ack is None else ack.by

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.alerts.close()
        self.cluster.close()
        self.db.close()


def test_an_ack_on_one_node_holds_on_the_other_within_a_second_and_without_listen_within_the_fallback(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    a = Node(url, "a")
    a.start()
    b = Node(url, "b")
    b.start()
    watcher = open_shared(url)
    try:
        assert a.cluster.leader and not b.cluster.leader
        wait_until("both listening", lambda: a.cluster.listening and b.cluster.listening, timeout=10)
        fired = a.alerts.apply(AlertUpdate(rule="aqi-bad", labels={"area": "22945"}, severity="critical",
                                           state="firing", summary="AQI", value=180.0, at=100.0))
        assert fired is not None
        wait_until("b hears of the alert",
                   lambda: [alert.id for alert in b.alerts.active()] == [fired.id], timeout=5)
        time.sleep(2.5)  # the rounds' first syncs are done: from here LISTEN alone tells
        syncs = a.syncs, b.syncs
        b.alerts.ack(fired.id, "truc-ban")
        # Told by NOTIFY at once (a 20 ms gathering and one read; no bound asserted on a loaded box).
        wait_until("a sees the ack", lambda: a.acked_by(fired.id) == "truc-ban", timeout=5)
        wait_until("the leader notifies it", lambda: [n.change for n in a.hook.got] == ["firing", "acknowledged"],
                   timeout=5)
        assert (a.syncs, b.syncs) == syncs  # heard, not polled: the periodic sync did not run

        # LISTEN cut on a (its backend terminated) and kept away: a syncs every round again.
        def refuse(channel: str) -> Any:
            raise StoreError("listening refused by the test")

        monkeypatch.setattr(a.cluster._db, "listening", refuse)
        watcher.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?",
                        ("ioc a listen",))
        wait_until("a's LISTEN is down", lambda: not a.cluster.listening, timeout=10)
        before = a.syncs
        b.alerts.unack(fired.id, "truc-ban")
        wait_until("a sees the unack by its 1 s sync", lambda: a.acked_by(fired.id) is None, timeout=5)
        assert a.syncs > before
        wait_until("the leader notifies it",
                   lambda: [n.change for n in a.hook.got][-1] == "unacknowledged", timeout=5)
        assert len({note.id for note in a.hook.got}) == 3
    finally:
        watcher.close()
        b.close()
        a.close()
