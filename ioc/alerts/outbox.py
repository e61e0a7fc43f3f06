"""The notification outbox: alert changes owed to durable notifiers survive a crash (at least once).

A *durable* notifier (webhooks, `ioc/v1/alerts/...` on MQTT, the `alert` measurement in InfluxDB) gets each
change it `wants` as a `Notification`. Its row in the store's outbox is written in the same SQLite
transaction as the alert change itself, before anyone is told; the notifier calls `settle(seq)` once the
notification is delivered (or given up for good: failed after its attempts, dropped from a full queue), and
the row is removed. Rows still there at start-up are delivered again, in order, before any new change.

So a change is never lost between the store and a receiver. A SIGKILL after the receiver took a delivery
and before its row is gone repeats it after the restart: for a webhook that window is one SQLite commit
in the delivery thread right after the 2xx; for MQTT and InfluxDB, whose settlements come in bursts, the
next look at the connector's unacknowledged publishes (every 5 ms) or the sink's callback, then `GATHER`
(2 ms, so a burst costs one commit) and the commit. Receivers de-duplicate on the
notification's `id`: the same on every re-send and for every receiver of the change (a webhook's
`Idempotency-Key` header and `notification_id` field, the `notification_id` field on MQTT).

How a change is made idempotent across nodes (CONTRACT §8). A leader cut from its store still tells what
changes (it cannot write an outbox row); if another node then leads, it records its own engine's view
(`ioc.alerts.leadership`) and tells those changes again. So ids are not drawn, they are derived from
what every node agrees on, having evaluated the same events:
- an alert's id (`alert_id`) is a digest of its fingerprint (rule + group labels) and the (event) time its
  episode began (`AlertUpdate.since`), salted only if the store already keeps another episode under it;
- a change's notification id (`notification_id`) is a digest of the alert id and the change, plus, for an
  acknowledgement, who and when (as stored: the ack is written before anyone is told), and for its
  withdrawal, when. Each of `pending`, `firing` and `resolved` happens once per episode.
Two nodes telling the same change thus give it the same id, and receivers de-duplicate it. This holds as
far as the nodes' evaluations agree: change times are event times (or a timer's due time, never a
node's clock), and every node gets each source's events in order; a late event that one node judges
before a timer its wall clock ran, and the other after, can still make them differ.
`muted` and `unmuted` are derived too (`muting_cause`): from what mutes the alert, or muted it until then,
as every node names it: each silence's id and version (its stored start for `muted`, its end for
`unmuted`, and its last update), and the episode id of the inhibiting alert (the earliest fired of those
that could: `Inhibitor.set_sources`). A new leader whose recording re-mutes what the old one told while
the store was away tells it under the old id.

An operator's change made on any node is told once (CONTRACT §8). Only the leader sends, so a change made
on a follower must reach whichever node leads next, even if the leader dies before it hears of it:
- an ack or unack made on a follower is stored with its outbox rows in one transaction (`Delivery.commit`),
  numbered apart from every leader's rows (FOREIGN up: `ForeignSeqs`). The leader delivers such rows when
  it hears the alert change (`Delivery.pick_up`, from `AlertManager.sync`: LISTEN/NOTIFY, or the safety
  sync), and tells only its own stream of the change it heard; a new leader takes them over with the rest
  of the outbox (`Delivery.take_over`). So the ack reaches a receiver once, under the id the follower gave
  it, whichever leader sends it;
- a silence made (or expired) on a follower: the rows of the muting changes it causes (worked out with the
  silence in place: `Silences.owed`) are written in the silence's transaction, numbered apart too. The
  leader also works the muting out when it hears of the silence; it remembers the (notifier, id) pairs it
  handed over lately (its own rows and those it picked up), so each change is sent once: a row of a change
  it already sent is settled unsent, a change it already sent from a row is not written again.
What was last told of an alert's muting is stored with the alert (migration 0006, in the transaction of the
change's rows): a node promoted, or started, compares it with the silences now and tells the difference,
so muting that a silence's start or end causes by the clock while no node leads is told once, by the next.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import orjson
import structlog

from ioc.alerts.alert import Acknowledgement, Alert, Change
from ioc.alerts.store import AlertStore

__all__ = ["FOREIGN", "Durable", "ForeignSeqs", "Notification", "Outbox", "Settle", "alert_from_record", "alert_id",
           "alert_record", "muting_cause", "new_ids", "notification_id"]

log = structlog.get_logger("ioc.alerts.outbox")

FOREIGN = 1 << 62  # outbox rows from here up were written by a node that did not lead (`ForeignSeqs`)
GATHER = 0.002  # seconds settlements are gathered before their rows are removed in one transaction

class Settle(Protocol):
    """Called by a durable notifier with a notification's `seq` once it needs no more delivering. `now`:
    remove its row at once, in the caller's thread (a webhook's delivery: the smallest window in which a
    crash repeats it); else the row goes with the next gathered batch (bursts: points, PUBACKs)."""

    def __call__(self, seq: int, *, now: bool = False) -> None: ...


@dataclass(frozen=True, slots=True)
class Notification:
    """One alert change for one notifier. `id` is the idempotency key; `seq` its outbox row (0: none, e.g.
    the store could not be written, or the notifier was called directly)."""

    alert: Alert
    change: Change
    id: str
    seq: int = 0


@runtime_checkable
class Durable(Protocol):
    """A notifier whose deliveries go through the outbox. `wants` says which changes it delivers at all
    (only those get a row); `deliver` takes one over and returns at once (queue, never wait on the network),
    raising NotifyError when it refuses it for good; `settle(note.seq)` follows once it is delivered."""

    name: str

    def wants(self, alert: Alert, change: Change) -> bool: ...

    def deliver(self, note: Notification, settle: Settle) -> None: ...


def new_ids() -> Callable[[], str]:
    """A source of notification ids: a random prefix per process, then a counter (unique across restarts
    without a random draw per change)."""
    prefix = os.urandom(6).hex()
    counter = iter(range(1, 1 << 62))
    return lambda: f"{prefix}-{next(counter):x}"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:32]


def alert_id(fingerprint: str, started_at: float, salt: int = 0) -> str:
    """The id of the episode of `fingerprint` that began at `started_at` (event time): the same on every
    node (32 hex digits, as the random ids before it). `salt` > 0: the n-th other episode with that start
    (a late event began a new episode at the very time an earlier one did)."""
    return _digest("alert", fingerprint, repr(float(started_at)), str(salt) if salt else "")


def notification_id(alert: Alert, change: Change, cause: str = "") -> str:
    """The idempotency key of `change` of `alert` (see the module doc). For `muted` and `unmuted`, `cause`
    names what mutes the alert, or muted it until now (`muting_cause`)."""
    if change == "acknowledged" and alert.acknowledged is not None:
        return _digest(alert.id, change, alert.acknowledged.by, repr(alert.acknowledged.at))
    if change == "unacknowledged":
        return _digest(alert.id, change, repr(alert.updated_at))
    if change in ("muted", "unmuted"):
        return _digest(alert.id, change, cause)
    return _digest(alert.id, change)


def muting_cause(silences: Iterable[tuple[str, str]], inhibiting: str | None) -> str:
    """What a muting change is about, as every node names it: the silences (id, and a version: the stored
    start of a `muted` or end of an `unmuted`, and the silence's last update, so a silence updated to
    mute again is another change) and the episode id of the inhibiting alert, sorted."""
    parts = sorted(f"s:{silence_id}@{version}" for silence_id, version in silences)
    if inhibiting is not None:
        parts.append(f"i:{inhibiting}")
    return ",".join(parts)


class ForeignSeqs:
    """Sequence numbers for the outbox rows a node writes while it does not lead (an operator's change:
    `Delivery.commit`): from FOREIGN up, apart from every leader's (`term << 40` up, terms below 2**22),
    microseconds of the wall clock shifted past a byte of the node's name, so two nodes do not collide
    and each row comes after every row that was there when it was written."""

    def __init__(self, node: str) -> None:
        self._byte = hashlib.sha256(node.encode("utf-8")).digest()[0]
        self._last = 0

    def __call__(self) -> int:
        now = FOREIGN + (int(time.time() * 1e6) << 8) + self._byte
        self._last = max(now, self._last + 256)
        return self._last


# --- the alert snapshot a row carries ------------------------------------------------------------------------

def alert_record(alert: Alert) -> bytes:
    """The alert exactly as it was told (muting included), to be told again the same way after a restart."""
    ack = alert.acknowledged
    return orjson.dumps({
        "id": alert.id, "fingerprint": alert.fingerprint, "rule": alert.rule, "severity": alert.severity,
        "state": alert.state, "labels": alert.labels, "summary": alert.summary, "value": alert.value,
        "started_at": alert.started_at, "fired_at": alert.fired_at, "resolved_at": alert.resolved_at,
        "runbook": alert.runbook, "acknowledged": None if ack is None else [ack.by, ack.at],
        "updated_at": alert.updated_at, "silenced_by": alert.silenced_by, "inhibited_by": alert.inhibited_by,
        "summary_en": alert.summary_en,
    })


def alert_from_record(data: bytes) -> Alert:
    raw = orjson.loads(data)
    ack = raw.pop("acknowledged")
    silenced_by = tuple(raw.pop("silenced_by"))
    return Alert(**raw, acknowledged=None if ack is None else Acknowledgement(ack[0], ack[1]),
                 silenced_by=silenced_by)


# --- removing delivered rows -----------------------------------------------------------------------------------

class Outbox:
    """Removes settled rows from the store: `settle(seq)` (any thread, never blocks) hands the number to a
    small thread that deletes everything settled since its last round in one transaction, so a burst of
    deliveries (an alert storm's points to InfluxDB) costs a commit a round, not one each."""

    def __init__(self, store: AlertStore) -> None:
        self.store = store
        self._settled: list[int] = []
        self._cond = threading.Condition()
        self._busy = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._failing = False
        self._unremoved: list[int] = []  # settled rows a failing store did not delete yet
        self.errors = 0

    def settle(self, seq: int, *, now: bool = False) -> None:
        if seq <= 0:
            return
        if now:
            if not self._closing:
                self._remove([seq])
            return
        with self._cond:
            if self._closing:
                return
            self._settled.append(seq)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="alerts-outbox", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every settled row is removed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._settled and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Remove what is settled (up to `timeout`), then stop; later settlements are ignored (their rows
        are delivered again at the next start)."""
        self.flush(timeout)
        self._remove([])  # what a store outage left
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._settled or self._closing)
                if not self._settled:
                    self._thread = None
                    return
                self._busy = True
                if not self._closing:
                    # Settlements come in bursts (a sink's flush, the broker's PUBACKs, an alert storm's
                    # deliveries): gather them for a moment, one commit for all. This moment is part of
                    # the window in which a crash repeats a delivery.
                    self._cond.wait(GATHER)
                seqs, self._settled = self._settled, []
            self._remove(seqs)

    def _remove(self, seqs: list[int]) -> None:
        """Delete the rows of `seqs`, and of those a failing store did not take before (a PostgreSQL outage:
        removed with the next settlement after it, or at `close`)."""
        with self._cond:
            seqs, self._unremoved = self._unremoved + seqs, []
        if not seqs:
            return
        try:
            self.store.outbox_done(seqs)
        except Exception as error:  # noqa: BLE001 - a full disk or a closed store: the rows are sent again
            self.errors += 1
            if not self._failing:
                log.error("alerts.outbox_remove_failed", rows=len(seqs), error=str(error),
                          effect="removed with a later settlement, or delivered again after a restart")
            self._failing = True
            with self._cond:
                self._unremoved = seqs + self._unremoved
        else:
            self._failing = False
