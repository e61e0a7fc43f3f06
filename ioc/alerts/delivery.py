"""Delivery: alert changes are stored, with the outbox rows they owe, before anyone is told.

The last stage of the notification pipeline (after `ioc.alerts.muting`). `record` queues a change;
`flush` stores every queued alert and the outbox rows of the durable notifiers that want the changes in
one store transaction, then hits the failpoint `alerts.before_notify`, then tells the notifier chain,
in order of the changes. So a crash at any moment loses no notification: what the outbox still holds at
start-up is delivered again (`resume`) before any new change (`ioc.alerts.outbox`).

In a cluster (CONTRACT §8) only the leader (`leader()`) stores alert changes with outbox rows and hands
them to the durable notifiers; a follower tells its plain notifiers (its SSE stream) only, and stores an
operator's change with outbox rows numbered apart, which the leader, this one or the next, delivers
(`pick_up`, `take_over`; `ioc.alerts.outbox`, "An operator's change made on any node is told once"). A node
that becomes leader takes the outbox over (`take_over`): the rows the old leader left are delivered again
with their notification ids, so a change the old leader delivered just before dying reaches a receiver
twice under one id, which it de-duplicates on. A change a leader cut from the store told without a row,
and the next leader tells again from its own evaluation, has one id too: ids are derived from the alert
and the change, never drawn (`ioc.alerts.outbox`, "How a change is made idempotent across nodes"). Its own rows are numbered from `term << 40`, so a demoted
leader's late settlement can never remove a row of the new one.

Not thread-safe on its own: the `AlertManager` calls it under its lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeAlias

import structlog
from prometheus_client.core import Metric

from ioc import failpoints
from ioc.alerts import outbox as ids
from ioc.alerts.alert import Alert, Change
from ioc.alerts.audit import AuditEntry
from ioc.alerts.episodes import EpisodeIds
from ioc.alerts.notify import NotifierChain
from ioc.alerts.outbox import FOREIGN, ForeignSeqs, Notification, Outbox, alert_from_record, alert_record
from ioc.alerts.store import AlertStore, OutboxRow
from ioc.metrics import counter, gauge
from ioc.store import StoreError
from ioc.store.outage import Outage

log = structlog.get_logger("ioc.alerts")

# A change ready to be told: the alert, the change, its notification id, and the outbox row's sequence
# number for each durable notifier (by key) that wants it (0: the row could not be written).
_Prepared: TypeAlias = tuple[Alert, Change, str, dict[str, int]]
# A change recorded and not told yet: the alert, the change, what a muting change is about (`muting_cause`),
# and whether another node wrote its outbox rows (its durable notifiers get them from there: `pick_up`).
_Untold: TypeAlias = tuple[Alert, Change, str, bool]
HANDED_MAX = 10_000  # (notifier, notification id) pairs remembered as handed over (`_handed`)


class Delivery:
    """Stores alert changes with their outbox rows, then tells `chain`. `resume()` starts the durable
    deliveries: until then they wait (in the outbox, and here), after what a crash left owed."""

    def __init__(self, store: AlertStore, chain: NotifierChain, *, leader: Callable[[], bool] | None = None) -> None:
        self.store = store
        self.chain = chain
        self.leader: Callable[[], bool] = leader or (lambda: True)
        self.outbox = Outbox(store)
        self.store_errors = 0
        self._outage = Outage("alerts")
        self._foreign_seq = ForeignSeqs(store.node)  # an operator's change stored while not leading
        self._taken: set[int] = set()  # other nodes' rows handed to the notifiers, and still in the outbox
        # (notifier, notification id) this node handed over lately, from a row: a change heard twice (a
        # silence made on a follower: its rows, and the muting this node works out itself) is sent once.
        self._handed: dict[tuple[str, str], None] = {}
        self.episodes = EpisodeIds(store, store_down=lambda: self._outage.down)
        self._owed: list[OutboxRow] = store.outbox()  # what a crash left undelivered: sent first
        self._next_seq = _after_own(self._owed, 1)
        self._held: list[_Prepared] | None = []  # durable deliveries made before `resume()`
        # Changes made and not yet stored and told (`flush`), in order.
        self._unsaved: dict[str, Alert] = {}
        self._muting: dict[str, Alert] = {}  # alerts whose muting to record (that column alone)
        # Whether this node took the outbox over since it last led: until then the rows other nodes wrote
        # are `take_over`'s to deliver, and a `pick_up` racing it (the lease is won, the promotion still
        # under way) would deliver them a second time.
        self._taken_over = self.leader()  # made to lead from the start (one node): nothing to take over
        self._untold: list[_Untold] = []

    @property
    def owed(self) -> int:
        """Notifications the outbox held at start-up and not yet sent again."""
        return len(self._owed)

    def resume(self) -> None:
        """Start the durable deliveries: first what the outbox held at start-up (in order), then the
        changes made since. Idempotent."""
        held, self._held = self._held, None
        if held is None:
            return
        owed, self._owed = self._owed, []
        if not self.leader():
            owed = []  # the leader's to deliver; taken over if this node leads (`take_over`)
        self._redeliver(owed)
        for alert, change, notification_id, seqs in held:
            self.chain.dispatch(alert, change, notification_id, seqs, self.outbox.settle, plain=False)

    def keep_unsaved(self, keep: bool) -> None:
        """At a promotion: the alert rows this node could not store while it led last are written (`keep`:
        it held the lease itself in between) or dropped (another node led and wrote since)."""
        self._taken_over = False
        if not keep:
            self._unsaved, self._muting = {}, {}
        self._outage.retry_now()  # the lease was just taken: the store answers

    def take_over(self, term: int) -> None:
        """This node leads from now (lease term `term`): what the outbox holds is delivered again (StoreError:
        the store does not answer; the caller tries again)."""
        owed = self.store.outbox()
        self.episodes.know_starts()  # the episodes the other leaders recorded
        self._next_seq = max(self._next_seq, _after_own(owed, 0), term << 40)
        self._taken = {row.seq for row in owed if row.seq >= FOREIGN}
        self._taken_over = True
        if self._held is not None:  # not resumed yet: `resume` delivers them first
            self._owed = owed
            return
        self._redeliver(owed)

    def pick_up(self) -> None:
        """The leader delivers the rows other nodes wrote (an operator's change on a follower) that it has
        not handed over yet (StoreError: the store does not answer; the next call tries again). Called
        when it hears the alerts change (`AlertManager.sync`), as such a row is written with the alert."""
        if not self._taken_over:
            return
        rows = self.store.outbox(FOREIGN)
        self._taken &= {row.seq for row in rows}  # those gone were delivered
        new = [row for row in rows if row.seq not in self._taken]
        if not new:
            return
        self._taken.update(row.seq for row in new)
        unsent = []
        for row in new:
            if (row.notifier, row.id) in self._handed:  # this node sent that change already, from its own row
                self.outbox.settle(row.seq)
            else:
                unsent.append(row)
        new = unsent
        if not new:
            return
        if self._held is not None:  # not resumed yet: after what the outbox held at start-up
            self._owed.extend(new)
            return
        log.info("alerts.outbox_picked_up", notifications=len(new))
        self._redeliver(new, quiet=True)

    def _redeliver(self, owed: list[OutboxRow], *, quiet: bool = False) -> None:
        settle = self.outbox.settle
        orphans = 0
        self._hand(owed)
        for row in owed:
            try:
                note = Notification(alert_from_record(row.alert), row.change, row.id,  # type: ignore[arg-type]
                                    row.seq)
            except (ValueError, TypeError, KeyError):
                note = None
            if note is None or not self.chain.redeliver(row.notifier, note, settle):
                orphans += 1
                settle(row.seq)
        if owed and (orphans or not quiet):
            log.info("alerts.outbox_resent", notifications=len(owed) - orphans,
                     dropped=orphans, reason="a notifier no longer configured, or a damaged row")

    def record(self, alert: Alert, change: Change, *, save: bool, cause: str = "", elsewhere: bool = False) -> None:
        """A change to store (`save`: the alert's row; a muting change: its muting column alone) and tell at
        the next `flush`. `cause`: what a muting change is about (`ioc.alerts.outbox.muting_cause`); `elsewhere`:
        the node that stored it wrote its outbox rows too, so only the plain notifiers are told here."""
        if save:
            self._unsaved[alert.id] = alert
        elif change in ("muted", "unmuted"):  # what is told of muting is recorded with its outbox rows
            self._muting[alert.id] = alert
        self._untold.append((alert, change, cause, elsewhere))

    def record_muting(self, alert: Alert) -> None:
        """The alert's muting changed without a change to tell (another silence beside one that mutes it):
        recorded at the next `flush`, so a new leader names the silences the next change is about."""
        self._muting[alert.id] = alert

    def flush(self) -> None:
        """Store what changed since the last flush, with its outbox rows, in one transaction; then tell.
        A store that cannot be written loses no alert: it is still told (without the outbox: a crash may
        then lose those notifications), and counted; its row is written again with a later flush (the
        store's outage logged once, retried every few seconds: `ioc.store.outage`)."""
        if not self._untold and not self._unsaved and not self._muting:
            return
        if not self.leader():  # a follower: its own stream hears of it, nothing is stored or sent
            # Rows a leader could not store before it stopped leading stay: written if it leads again
            # before anyone else did (`keep_unsaved`), else dropped.
            untold, self._untold = self._untold, []
            self._muting = {}  # a leader compares the store's with its own at promotion (`promote`)
            self._taken_over = False  # it leads again only through `take_over`
            self._tell([(alert, change, _id(alert, change, cause), {}) for alert, change, cause, _ in untold])
            return
        alerts = list(self._unsaved.values())
        muting = [alert for key, alert in self._muting.items() if key not in self._unsaved]
        prepared, rows = self._prepare(self._untold)
        self._unsaved, self._untold, self._muting = {}, [], {}
        stored = False
        if self._outage.ready():  # not a connection attempt per batch while the store is away
            try:
                self.store.commit(alerts, rows, muting=muting)
                stored = True
            except StoreError as error:
                if not self._outage.down:
                    log.error("alerts.store_failed", alerts=len(alerts), notifications=len(rows),
                              error=str(error),
                              effect="told without the outbox: lost if the process dies before delivering them")
                self._outage.failed(error, buffered=len(alerts))
        if stored:
            self._outage.recovered(written=len(alerts))
            self.episodes.answered()
            self._hand(rows)
        else:
            self.store_errors += len(prepared)
            for alert in alerts:  # written with a later flush, unless a newer change replaces it
                self._unsaved.setdefault(alert.id, alert)
            for alert in muting:
                self._muting.setdefault(alert.id, alert)
            prepared = [(alert, change, nid, dict.fromkeys(seqs, 0)) for alert, change, nid, seqs in prepared]
        self._tell(prepared)

    @property
    def unsaved(self) -> int:
        """Alert rows a failing store has not taken yet (written again by `flush`)."""
        return len(self._unsaved) if self._outage.down else 0

    def commit(self, alert: Alert, change: Change, audit: AuditEntry) -> None:
        """An operator's change: what is queued goes first; then this one is stored with its audit
        entry and its outbox rows (StoreError: refused, nothing told) and told. On a follower the rows
        are numbered apart (`ForeignSeqs`) and only its plain notifiers are told: the leader, this one or
        the next, delivers the rows (`pick_up`, `take_over`), so the change is told even if the leader
        dies before it hears of it."""
        self.flush()
        if not self.leader():
            prepared, rows = self._prepare([(alert, change, "", False)], seq=self._foreign_seq)
            self.store.commit([alert], rows, audit)
            self._tell([(alert, change, notification_id, {}) for alert, change, notification_id, _ in prepared])
            return
        prepared, rows = self._prepare([(alert, change, "", False)])
        self.store.commit([alert], rows, audit)
        self._hand(rows)
        self._tell(prepared)

    def foreign_rows(self, changes: Iterable[tuple[Alert, Change, str]]) -> list[OutboxRow]:
        """The outbox rows a follower writes for muting changes (alert, change, cause) its operator's
        silence causes, in the silence's transaction (`Silences.owed`), numbered apart as an ack's. The
        leader also works the muting out when it hears of the silence, and sends each change once
        (`_handed`)."""
        return self._prepare([(alert, change, cause, False) for alert, change, cause in changes],
                             seq=self._foreign_seq)[1]

    def _hand(self, rows: Iterable[OutboxRow]) -> None:
        handed = self._handed
        for row in rows:
            handed[(row.notifier, row.id)] = None
        while len(handed) > HANDED_MAX:
            del handed[next(iter(handed))]

    def _own_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _prepare(self, changes: Iterable[_Untold], seq: Callable[[], int] | None = None,
                 ) -> tuple[list[_Prepared], list[OutboxRow]]:
        """Give each change its notification id, and an outbox row for each durable notifier that wants it
        (none for a change whose rows another node wrote)."""
        prepared: list[_Prepared] = []
        rows: list[OutboxRow] = []
        wanting = self.chain.wanting
        next_seq = seq or self._own_seq
        for alert, change, cause, elsewhere in changes:
            notification_id = _id(alert, change, cause)
            keys = () if elsewhere else wanting(alert, change)
            if seq is None and keys and self._handed:  # not again what this node sent already
                keys = [key for key in keys if (key, notification_id) not in self._handed]
            seqs: dict[str, int] = {}
            if keys:
                record = alert_record(alert)
                for key in keys:
                    number = seqs[key] = next_seq()
                    rows.append(OutboxRow(number, key, notification_id, change, record))
            prepared.append((alert, change, notification_id, seqs))
        return prepared, rows

    def episode_id(self, fingerprint: str, started_at: float) -> str:
        """A new episode's id (`ioc.alerts.episodes`)."""
        return self.episodes.new(fingerprint, started_at)

    def _tell(self, prepared: list[_Prepared]) -> None:
        """Tell stored changes, in order: the plain notifiers now; the durable ones now, or once resumed."""
        if not prepared:
            return
        if failpoints.ACTIVE:
            try:
                failpoints.hit("alerts.before_notify")
            except OSError as error:  # `error`: nobody is told now; the outbox delivers at the next start
                log.error("alerts.notify_skipped", changes=len(prepared), error=str(error))
                return
        settle = self.outbox.settle
        held = self._held
        for alert, change, notification_id, seqs in prepared:
            if held is None:
                self.chain.dispatch(alert, change, notification_id, seqs, settle)
            else:
                self.chain.dispatch(alert, change, notification_id, seqs, settle, durable=False)
                if seqs:
                    held.append((alert, change, notification_id, seqs))

    def metrics(self) -> Iterable[Metric]:
        """`ioc_alert_store_errors_total`, the notifiers' metrics, `ioc_alert_outbox{notifier}`."""
        yield counter("ioc_alert_store_errors", "Alert changes (or removals of delivered notifications "
                      "from the outbox) that could not be written to the store.", (),
                      {(): self.store_errors + self.outbox.errors})
        yield from self.chain.metrics()
        owed = dict.fromkeys(self.chain.durable, 0)
        try:
            owed.update(self.store.outbox_counts())
        except StoreError:  # closed, or busy past its timeout: the gauge says what it knows
            pass
        yield gauge("ioc_alert_outbox", "Notifications stored and not yet delivered (sent again after a "
                    "restart), by notifier.", ("notifier",), {(key,): float(n) for key, n in owed.items()})

    def close(self, timeout: float) -> None:
        """Give deliveries up to `timeout` seconds; what is not delivered stays in the outbox."""
        self.chain.close(timeout)
        self.outbox.close(timeout)


def _id(alert: Alert, change: Change, cause: str) -> str:
    """The change's notification id: derived, the same on every node (`ioc.alerts.outbox`)."""
    return ids.notification_id(alert, change, cause)


def _after_own(rows: list[OutboxRow], floor: int) -> int:
    """The number after the last row a leader wrote among `rows` (`floor` when none): other nodes' rows
    (FOREIGN up) are not in its sequence."""
    own = [row.seq for row in rows if row.seq < FOREIGN]
    return max(own) + 1 if own else floor
