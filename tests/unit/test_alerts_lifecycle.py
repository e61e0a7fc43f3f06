"""The alert life cycle (ioc.alerts.manager): episodes, acknowledgements, listing, restart, muting, the
outbox, and the rule engine adopting the store's alerts after a crash (rules.engine.RuleEngine.adopt), on a
fake clock with the store in a temporary SQLite file."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from ioc.rules.engine import RuleEngine
from ioc.rules.loader import parse_rules
from ioc.rules.updates import AlertUpdate, fingerprint

from ioc import failpoints
from ioc.alerts.alert import Alert, Change
from ioc.alerts.config import AlertsSettings
from ioc.alerts.errors import AlertConflict, AlertNotFound, NotifyError
from ioc.alerts.manager import AlertManager
from ioc.alerts.outbox import Notification
from ioc.alerts.silence import SilenceRequest
from ioc.alerts.store import AlertStore, OutboxRow
from ioc.config import load_settings
from ioc.envelope import AnyEvent
from tests.doubles import SettableClock
from tests.unit import rules_support as rs

T0 = 1_772_409_600.0  # 2026-03-02T00:00:00Z
CONTRACT_KEYS = {"id", "fingerprint", "rule", "severity", "state", "labels", "summary", "value", "started_at",
                 "fired_at", "resolved_at", "acknowledged", "silenced"}


class Recorder:
    """A notifier that keeps every (alert, change) it is told."""

    name = "recorder"

    def __init__(self) -> None:
        self.got: list[tuple[Alert, Change]] = []

    def notify(self, alert: Alert, change: Change) -> None:
        self.got.append((alert, change))

    @property
    def changes(self) -> list[tuple[str, Change]]:
        return [(alert.rule, change) for alert, change in self.got]


def update(state: str, at: float, *, rule: str = "aqi-bad", area: str = "22723", severity: str = "critical",
           value: float | None = 160.0, **labels: str) -> AlertUpdate:
    return AlertUpdate(rule=rule, labels={"area": area, **labels}, severity=severity,  # type: ignore[arg-type]
                       state=state, summary=f"AQI {value} tại {area}", value=value, at=at)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(T0)


@pytest.fixture
def db(store_url: str) -> str:
    return store_url  # every test here runs on SQLite and on PostgreSQL


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def manager(db: Path, clock: SettableClock, recorder: Recorder) -> Iterator[AlertManager]:
    manager = AlertManager(AlertStore(db), notifiers=[recorder], clock=clock)
    yield manager
    manager.close()


def reopen(db: Path, clock: SettableClock, recorder: Recorder, **options: Any) -> AlertManager:
    return AlertManager(AlertStore(db), notifiers=[recorder], clock=clock, **options)


# --- episodes ------------------------------------------------------------------------------------------

def test_pending_firing_resolved_is_one_alert_with_its_times(manager: AlertManager,
                                                             recorder: Recorder) -> None:
    pending = manager.apply(update("pending", T0 + 60))
    firing = manager.apply(update("firing", T0 + 660, value=165.0))
    resolved = manager.apply(update("resolved", T0 + 1800, value=110.0))
    assert pending and firing and resolved
    assert pending.id == firing.id == resolved.id
    assert len(pending.id) == 32 and int(pending.id, 16) >= 0
    assert resolved.fingerprint == fingerprint("aqi-bad", {"area": "22723"})
    assert (resolved.started_at, resolved.fired_at, resolved.resolved_at) == (T0 + 60, T0 + 660, T0 + 1800)
    assert [change for _, change in recorder.got] == ["pending", "firing", "resolved"]
    body = resolved.as_json()
    assert set(body) >= CONTRACT_KEYS
    assert body["state"] == "resolved" and body["value"] == 110.0 and body["labels"] == {"area": "22723"}
    assert body["started_at"] == "2026-03-02T00:01:00+00:00"
    assert datetime.fromisoformat(str(body["resolved_at"])).timestamp() == T0 + 1800
    assert body["acknowledged"] is None and body["silenced"] is False


def test_a_resolved_alert_keeps_the_summary_it_fired_with(manager: AlertManager) -> None:
    manager.apply(update("pending", T0 + 60, value=155.0))
    firing = manager.apply(update("firing", T0 + 660, value=165.0))
    resolved = manager.apply(update("resolved", T0 + 1800, value=47.9))
    assert firing and resolved
    assert firing.summary == "AQI 165.0 tại 22723"
    assert resolved.summary == "AQI 165.0 tại 22723"  # not re-worded with the recovery value
    assert resolved.value == 47.9
    assert manager.get(resolved.id).summary == "AQI 165.0 tại 22723"  # as stored


def test_a_repeated_state_is_not_a_change(manager: AlertManager, recorder: Recorder) -> None:
    assert manager.apply(update("firing", T0)) is not None
    assert manager.apply(update("firing", T0 + 10, value=170.0)) is None
    assert manager.apply(update("resolved", T0 + 20)) is not None
    assert manager.apply(update("resolved", T0 + 30)) is None  # nothing left to resolve
    assert [change for _, change in recorder.got] == ["firing", "resolved"]


def test_an_update_the_contract_does_not_know_is_refused(manager: AlertManager, recorder: Recorder) -> None:
    assert manager.apply(update("exploded", T0)) is None
    assert manager.apply(update("firing", T0, severity="page")) is None
    assert manager.list() == [] and recorder.got == []


def test_firing_without_pending_starts_and_fires_at_once(manager: AlertManager) -> None:
    alert = manager.apply(update("firing", T0 + 5))
    assert alert is not None and alert.started_at == alert.fired_at == T0 + 5


def test_back_to_pending_while_firing_keeps_it_firing(manager: AlertManager, recorder: Recorder) -> None:
    fired = manager.apply(update("firing", T0))
    assert manager.apply(update("pending", T0 + 60)) is None
    assert fired is not None and manager.get(fired.id).state == "firing"
    assert len(recorder.got) == 1


def test_a_new_episode_after_a_resolve_is_a_new_alert(manager: AlertManager) -> None:
    first = manager.apply(update("firing", T0))
    manager.apply(update("resolved", T0 + 60))
    second = manager.apply(update("pending", T0 + 120))
    assert first and second
    assert second.id != first.id and second.fingerprint == first.fingerprint
    assert manager.get(first.id).state == "resolved"  # the old episode is kept, resolved
    assert [alert.id for alert in manager.list()] == [second.id]


def test_group_labels_make_separate_alerts(manager: AlertManager) -> None:
    a = manager.apply(update("firing", T0, area="22723"))
    b = manager.apply(update("firing", T0, area="22724"))
    assert a and b and a.id != b.id and a.fingerprint != b.fingerprint


# --- acknowledgements ----------------------------------------------------------------------------------

def test_ack_records_who_and_when_and_keeps_it_firing(manager: AlertManager, clock: SettableClock,
                                                       recorder: Recorder) -> None:
    alert = manager.apply(update("firing", T0))
    assert alert is not None
    clock.now = T0 + 90
    acked = manager.ack(alert.id, "truc-ban-1")
    assert acked.state == "firing"
    assert acked.as_json()["acknowledged"] == {"by": "truc-ban-1", "at": "2026-03-02T00:01:30+00:00"}
    assert [a.id for a in manager.list("firing")] == [alert.id]
    assert [a.id for a in manager.list("acknowledged")] == [alert.id]
    assert recorder.got[-1][1] == "acknowledged"
    # A second ack changes nothing (the first operator stays on record).
    assert manager.ack(alert.id, "truc-ban-2").acknowledged == acked.acknowledged
    unacked = manager.unack(alert.id, "truc-ban-2")
    assert unacked.acknowledged is None and manager.list("acknowledged") == []
    assert [c for _, c in recorder.got] == ["firing", "acknowledged", "unacknowledged"]
    audit = manager.audit_log(target=alert.id)
    assert [(e.actor, e.action) for e in audit] == [("truc-ban-2", "alert.unack"),
                                                    ("truc-ban-1", "alert.ack")]
    assert audit[1].at == T0 + 90 and audit[1].detail["rule"] == "aqi-bad"


def test_only_a_firing_alert_can_be_acked(manager: AlertManager) -> None:
    pending = manager.apply(update("pending", T0))
    assert pending is not None
    with pytest.raises(AlertConflict, match="is pending: only a firing alert can be acknowledged"):
        manager.ack(pending.id, "op")
    manager.apply(update("firing", T0 + 1))
    manager.apply(update("resolved", T0 + 2))
    with pytest.raises(AlertConflict, match="is resolved"):
        manager.ack(pending.id, "op")
    with pytest.raises(AlertConflict, match="is resolved"):
        manager.unack(pending.id, "op")
    with pytest.raises(AlertNotFound, match="no alert with id 'nope'"):
        manager.ack("nope", "op")
    assert manager.audit_log() == []


def test_a_resolve_ends_the_ack_and_the_next_episode_starts_unacked(manager: AlertManager) -> None:
    alert = manager.apply(update("firing", T0))
    assert alert is not None
    manager.ack(alert.id, "op")
    resolved = manager.apply(update("resolved", T0 + 60))
    assert resolved is not None and resolved.acknowledged is None
    again = manager.apply(update("firing", T0 + 120))
    assert again is not None and again.acknowledged is None and manager.list("acknowledged") == []


# --- listing -------------------------------------------------------------------------------------------

def test_list_by_state_and_severity(manager: AlertManager) -> None:
    pending = manager.apply(update("pending", T0, rule="a", severity="warning"))
    firing = manager.apply(update("firing", T0, rule="b", severity="critical"))
    info = manager.apply(update("firing", T0, rule="c", severity="info"))
    gone = manager.apply(update("firing", T0, rule="d"))
    manager.apply(update("resolved", T0 + 5, rule="d"))
    assert pending and firing and info and gone
    assert [a.id for a in manager.list()] == [firing.id, pending.id, info.id]  # most severe first
    assert {a.id for a in manager.list("firing")} == {firing.id, info.id}
    assert [a.id for a in manager.list("pending")] == [pending.id]
    assert [a.id for a in manager.list("resolved")] == [gone.id]
    assert [a.id for a in manager.list(severity="warning")] == [pending.id]
    assert manager.list("resolved", severity="info") == []
    with pytest.raises(ValueError, match="not one of pending, firing, acknowledged, resolved"):
        manager.list("open")  # type: ignore[arg-type]


def test_get_unknown_is_not_found(manager: AlertManager) -> None:
    with pytest.raises(AlertNotFound):
        manager.get("0" * 32)


# --- restart -------------------------------------------------------------------------------------------

def test_a_restart_keeps_alerts_acks_and_silences_and_renotifies_nothing(
        db: Path, clock: SettableClock, recorder: Recorder) -> None:
    first = reopen(db, clock, recorder)
    firing = first.apply(update("firing", T0, area="22723"))
    pending = first.apply(update("pending", T0, area="22724"))
    first.apply(update("firing", T0, area="22725"))
    first.apply(update("resolved", T0 + 1, area="22725"))
    assert firing and pending
    first.ack(firing.id, "truc-ban-1")
    silence = first.create_silence(SilenceRequest.parse({"matchers": [{"name": "area", "value": "22724"}],
                                                         "duration": "1h"}), actor="truc-ban-1")
    first.close()

    later = Recorder()
    second = reopen(db, clock, later)
    assert {a.id for a in second.list()} == {firing.id, pending.id}
    assert second.get(firing.id).acknowledged == first.get(firing.id).acknowledged
    assert second.get(firing.id).acknowledged is not None
    assert [s.id for s in second.list_silences("active")] == [silence.id]
    assert second.get(pending.id).silenced_by == (silence.id,)  # muting worked out again, told to nobody
    assert len(second.list("resolved")) == 1
    # The rule engine, restarted too, reports what it sees again: nothing is a change.
    assert second.apply(update("firing", T0 + 100, area="22723")) is None
    assert second.apply(update("pending", T0 + 100, area="22724")) is None
    assert later.got == []
    second.close()


# --- muting --------------------------------------------------------------------------------------------

def test_a_silence_that_ended_while_the_daemon_was_down_is_told_at_the_restart_once(
        db: Path, clock: SettableClock, recorder: Recorder) -> None:
    """Muting follows the silences by the clock, and the store keeps what was last told of it: a silence
    that ends while no manager runs (a stopped daemon; in a cluster, no leader) is told as `unmuted` by
    the next one, once; and an older release's rows (no muting recorded) are worked out in silence."""
    first = reopen(db, clock, recorder)
    alert = first.apply(update("firing", T0, area="22723"))
    assert alert is not None
    first.create_silence(SilenceRequest.parse({"matchers": [{"name": "area", "value": "22723"}],
                                               "duration": "30m"}), actor="truc-ban-1")
    assert recorder.got[-1][1] == "muted"
    first.close()

    clock.now = T0 + 3600  # the silence ended an half hour ago, with nobody running
    later = Recorder()
    second = reopen(db, clock, later)
    assert [(told.id, change) for told, change in later.got] == [(alert.id, "unmuted")]
    assert not second.get(alert.id).silenced
    second.close()
    again = Recorder()
    reopen(db, clock, again).close()
    assert again.got == []  # recorded: told once

    store = AlertStore(db)  # a row as a release before the muting column wrote it
    with store.database.transaction():
        store.database.execute("UPDATE alerts SET muting = NULL")
    assert store.unrecorded_muting() == {alert.id}
    store.close()
    clock.now = T0 + 3700
    third = reopen(db, clock, again)
    third.create_silence(SilenceRequest.parse({"matchers": [{"name": "area", "value": "22723"}],
                                               "duration": "1h"}), actor="truc-ban-1")
    third.close()
    store = AlertStore(db)
    with store.database.transaction():
        store.database.execute("UPDATE alerts SET muting = NULL")
    store.close()
    fourth = reopen(db, clock, again)
    assert [change for _, change in again.got] == ["muted"]  # the silence's own, not one more at the start
    assert fourth.get(alert.id).silenced
    fourth.close()



def test_a_silence_mutes_and_its_expiry_unmutes(manager: AlertManager, recorder: Recorder) -> None:
    alert = manager.apply(update("firing", T0, area="22723"))
    other = manager.apply(update("firing", T0, area="22724"))
    assert alert and other
    silence = manager.create_silence(
        SilenceRequest.parse({"matchers": [{"name": "area", "value": "22723"}], "duration": "30m"}),
        actor="truc-ban-1")
    muted_alert, change = recorder.got[-1]
    assert change == "muted" and muted_alert.id == alert.id and muted_alert.silenced
    assert manager.get(alert.id).as_json()["silenced"] is True and not manager.get(other.id).silenced
    # Still recorded and listed while silenced.
    resolved = manager.apply(update("resolved", T0 + 60, area="22723"))
    assert resolved is not None and resolved.silenced and recorder.got[-1][1] == "resolved"
    again = manager.apply(update("firing", T0 + 120, area="22723"))
    assert again is not None and again.silenced_by == (silence.id,)
    manager.expire_silence(silence.id, actor="truc-ban-1")
    assert recorder.got[-1][1] == "unmuted" and not recorder.got[-1][0].silenced
    assert not manager.get(again.id).silenced


def test_tick_follows_silences_that_start_and_end_on_the_clock(manager: AlertManager, clock: SettableClock,
                                                                recorder: Recorder) -> None:
    alert = manager.apply(update("firing", T0))
    assert alert is not None
    manager.create_silence(SilenceRequest.parse({
        "matchers": [{"name": "rule", "value": "aqi-.*", "op": "=~"}],
        "starts_at": "2026-03-02T07:10:00+07:00", "ends_at": "2026-03-02T07:20:00+07:00"}), actor="op")
    assert not manager.get(alert.id).silenced  # pending silence
    clock.now = T0 + 599
    manager.tick()
    assert not manager.get(alert.id).silenced
    clock.now = T0 + 600
    manager.tick()
    assert manager.get(alert.id).silenced and recorder.got[-1][1] == "muted"
    clock.now = T0 + 1200
    manager.tick()
    assert not manager.get(alert.id).silenced and recorder.got[-1][1] == "unmuted"
    assert [s.status(clock.now) for s in manager.list_silences()] == ["expired"]


def test_resolved_alerts_are_purged_by_age_and_by_count(db: Path, clock: SettableClock, recorder: Recorder) -> None:
    settings = AlertsSettings.model_validate({"resolved_retention": "1d", "resolved_max": 2})
    manager = reopen(db, clock, recorder, settings=settings)
    for index in range(4):
        manager.apply(update("firing", T0 + index, area=f"a{index}"))
        manager.apply(update("resolved", T0 + 10 + index, area=f"a{index}"))
    manager.tick()
    assert [a.labels["area"] for a in manager.list("resolved")] == ["a3", "a2"]
    clock.now = T0 + 86400 + 12.5  # a2 resolved more than a day ago, a3 not yet
    manager.tick()
    assert [a.labels["area"] for a in manager.list("resolved")] == ["a3"]
    clock.now = T0 + 86400 + 50  # purges run once a minute: not yet
    manager.tick()
    assert len(manager.list("resolved")) == 1
    clock.now = T0 + 86400 + 73
    manager.tick()
    assert manager.list("resolved") == []
    samples = {m.name: {tuple(s.labels.values()): s.value for s in m.samples} for m in manager.metrics()}
    assert samples["ioc_alerts"][("resolved",)] == 0
    manager.close()


def test_metrics_count_alerts_by_state(manager: AlertManager) -> None:
    a = manager.apply(update("firing", T0, area="1"))
    manager.apply(update("firing", T0, area="2"))
    manager.apply(update("pending", T0, area="3"))
    assert a is not None
    manager.ack(a.id, "op")
    samples = {m.name: {tuple(s.labels.values()): s.value for s in m.samples} for m in manager.metrics()}
    assert samples["ioc_alerts"] == {("pending",): 1, ("firing",): 2, ("acknowledged",): 1, ("resolved",): 0}
    assert samples["ioc_alert_notifications"][("recorder", "sent")] == 4


# --- notification and concurrency ----------------------------------------------------------------------

class Broken:
    name = "broken"

    def notify(self, alert: Alert, change: Change) -> None:
        raise NotifyError("down", retryable=False)


def test_a_failing_notifier_costs_the_others_nothing(db: Path, clock: SettableClock, recorder: Recorder) -> None:
    manager = AlertManager(AlertStore(db), notifiers=[Broken(), recorder], clock=clock)
    assert manager.apply(update("firing", T0)) is not None
    assert [c for _, c in recorder.got] == ["firing"]
    outcomes = manager.chain.outcomes()
    assert outcomes[("broken", "failed")] == 1 and outcomes[("recorder", "sent")] == 1
    manager.close()


def test_concurrent_updates_make_each_change_once(manager: AlertManager, recorder: Recorder) -> None:
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for index in range(50):
            manager.apply(update("pending", T0, area=str(index)))
            manager.apply(update("firing", T0 + 1, area=str(index)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    changes = [change for _, change in recorder.got]
    assert changes.count("pending") == 50 and changes.count("firing") == 50
    assert len({alert.id for alert, _ in recorder.got}) == 50
    assert len(manager.list("firing")) == 50


def test_the_sample_config_loads() -> None:
    settings = load_settings(Path(__file__).resolve().parents[2] / "ioc" / "alerts" / "sample.conf")
    alerts = settings.alerts
    assert alerts.resolved_retention == 30 * 86400 and alerts.silence_retention == 5 * 86400
    assert [hook.name for hook in alerts.webhooks] == ["chat"]
    assert alerts.webhooks[0].changes == ["firing", "resolved", "unmuted"]
    (rule,) = alerts.inhibit
    assert rule.within_area and rule.target_matchers[0].build().matches({"rule": "cell-down"})
    assert alerts.stream_heartbeat == 15.0


# --- batches -------------------------------------------------------------------------------------------

def test_a_batch_stores_its_changes_together_at_its_end_then_notifies(
        manager: AlertManager, db: Path, clock: SettableClock, recorder: Recorder) -> None:
    outside = AlertStore(db)  # another connection: what is committed
    with manager.batch():
        first = manager.apply(update("firing", T0 + 60))
        manager.apply(update("pending", T0 + 60, area="22724"))
        manager.apply(update("resolved", T0 + 120, area="22724"))
        assert first is not None and [a.id for a in manager.list()] == [first.id]  # served at once
        assert outside.active_alerts() == [] and outside.resolved_alerts() == []  # stored at the end
        assert recorder.got == []  # told once stored
    assert [a.id for a in outside.active_alerts()] == [first.id]
    assert [a.labels["area"] for a in outside.resolved_alerts()] == ["22724"]
    assert recorder.changes == [("aqi-bad", "firing"), ("aqi-bad", "pending"), ("aqi-bad", "resolved")]
    # An operator's action on another thread while a batch is open stores (and tells) what the batch
    # changed so far first, then its own change: nobody hears of an ack before the firing it is about.
    with manager.batch():
        second = manager.apply(update("firing", T0 + 200, area="22725"))
        assert second is not None
        done = threading.Event()

        def operator() -> None:
            manager.ack(second.id, "truc-ban-1")
            done.set()

        threading.Thread(target=operator).start()
        assert done.wait(5)
        stored = outside.get_alert(second.id)
        assert stored is not None and stored.acknowledged is not None
        assert recorder.changes[-2:] == [("aqi-bad", "firing"), ("aqi-bad", "acknowledged")]
    outside.close()
    restarted = reopen(db, clock, recorder)
    assert {a.id for a in restarted.list()} == {first.id, second.id}
    assert restarted.get(second.id).acknowledged is not None
    restarted.close()


# --- the outbox: no notification lost across a crash ----------------------------------------------------

class Durable:
    """A durable notifier (as webhooks and MQTT are): keeps what it is handed; settles at once unless
    `hold` (the delivery is under way when the process dies)."""

    def __init__(self, name: str = "hook", *, hold: bool = False) -> None:
        self.name = name
        self.hold = hold
        self.got: list[Notification] = []

    def wants(self, alert: Alert, change: Change) -> bool:
        return change in ("firing", "resolved")

    def deliver(self, note: Notification, settle: Callable[[int], None]) -> None:
        self.got.append(note)
        if not self.hold:
            settle(note.seq)

    @property
    def changes(self) -> list[tuple[str, str, float | None]]:
        return [(note.change, note.alert.labels["area"], note.alert.value) for note in self.got]


def owed(db: Path) -> list[tuple[str, str]]:
    """(notifier, change) of the outbox's rows, as another connection sees them."""
    outside = AlertStore(db)
    try:
        return [(row.notifier, row.change) for row in outside.outbox()]
    finally:
        outside.close()


def test_a_change_is_stored_with_its_outbox_rows_before_anyone_is_told(db: Path, clock: SettableClock) -> None:
    seen: list[tuple[int, list[tuple[str, str]]]] = []

    class Watcher:
        name = "watcher"

        def notify(self, alert: Alert, change: Change) -> None:  # what is committed when it is told
            outside = AlertStore(db)
            seen.append((len(outside.active_alerts()), [(r.notifier, r.change) for r in outside.outbox()]))
            outside.close()

    hook = Durable(hold=True)
    manager = AlertManager(AlertStore(db), notifiers=[Watcher(), hook], clock=clock)
    manager.apply(update("pending", T0))  # the hook does not want it: no row
    manager.apply(update("firing", T0 + 60))
    assert seen == [(1, []), (1, [("hook", "firing")])]
    assert [note.change for note in hook.got] == ["firing"] and hook.got[0].seq > 0
    assert owed(db) == [("hook", "firing")]  # held: not delivered yet
    manager.close()


def test_what_a_crash_left_undelivered_is_delivered_first_after_the_restart(db: Path, clock: SettableClock) -> None:
    hook = Durable(hold=True)  # the receiver never answers before the crash
    crashed = AlertManager(AlertStore(db), notifiers=[hook], clock=clock)
    crashed.apply(update("firing", T0, area="1", value=1.0))
    crashed.apply(update("firing", T0, area="2", value=2.0))
    crashed.apply(update("resolved", T0 + 5, area="1", value=0.5))
    ids = [note.id for note in hook.got]
    assert owed(db) == [("hook", "firing"), ("hook", "firing"), ("hook", "resolved")]
    crashed.store.close()  # no close(): the process died

    again = Durable()
    restarted = AlertManager(AlertStore(db), notifiers=[again], clock=clock, resume=False)
    restarted.apply(update("resolved", T0 + 9, area="2", value=0.1))  # a change before resume: held
    assert again.got == []
    restarted.resume()
    assert again.changes == [("firing", "1", 1.0), ("firing", "2", 2.0), ("resolved", "1", 0.5),
                             ("resolved", "2", 0.1)]
    assert [note.id for note in again.got[:3]] == ids  # the same ids: receivers de-duplicate on them
    assert again.got[0].alert == hook.got[0].alert  # the alert as it was told
    assert restarted.outbox.flush(5) and owed(db) == []
    restarted.close()
    later = Durable()
    AlertManager(AlertStore(db), notifiers=[later], clock=clock).close()
    assert later.got == []  # delivered once: nothing owed any more


def test_rows_of_a_notifier_no_longer_configured_are_dropped(db: Path, clock: SettableClock) -> None:
    crashed = AlertManager(AlertStore(db), notifiers=[Durable("webhook:old", hold=True)], clock=clock)
    crashed.apply(update("firing", T0))
    crashed.store.close()
    restarted = AlertManager(AlertStore(db), notifiers=[Durable("webhook:new")], clock=clock)
    assert restarted.outbox.flush(5) and owed(db) == []
    restarted.close()


def test_a_failpoint_error_before_notifying_leaves_the_change_owed(db: Path, clock: SettableClock,
                                                                 recorder: Recorder) -> None:
    hook = Durable()
    manager = AlertManager(AlertStore(db), notifiers=[recorder, hook], clock=clock)
    failpoints.configure("alerts.before_notify=1*error")
    try:
        assert manager.apply(update("firing", T0)) is not None
    finally:
        failpoints.configure("")
    assert recorder.got == [] and hook.got == [] and owed(db) == [("hook", "firing")]
    manager.store.close()
    again = Durable()
    AlertManager(AlertStore(db), notifiers=[again], clock=clock).close()
    assert [note.change for note in again.got] == ["firing"]


def test_the_outbox_gauge_counts_what_is_owed(db: Path, clock: SettableClock) -> None:
    hook = Durable(hold=True)
    manager = AlertManager(AlertStore(db), notifiers=[hook, Durable("mqtt")], clock=clock)
    manager.apply(update("firing", T0))
    assert manager.outbox.flush(5)
    samples = {m.name: {tuple(s.labels.values()): s.value for s in m.samples} for m in manager.metrics()}
    assert samples["ioc_alert_outbox"] == {("hook",): 1.0, ("mqtt",): 0.0}
    manager.close()


# --- restart: the rule engine adopts what the store says is pending and firing ----------------------------

class Site:
    """The rule engine feeding the alert manager over one store file, as the daemon wires them: a saved
    engine state (`state`, as `dump_state` left it, maybe older than the store), then `adopt`."""

    def __init__(self, db: Path, rules: str, *, state: bytes | None = None, started: str = "0s") -> None:
        self.recorder = Recorder()
        self.manager = AlertManager(AlertStore(db), notifiers=[self.recorder], clock=lambda: rs.T0)
        self.engine = RuleEngine(parse_rules(rules), areas=None, on_change=self._apply,
                                 started_at=rs.at(started))
        if state is not None:
            self.engine.load_state(state)
        self.engine.adopt(self.manager.active())

    def _apply(self, update: AlertUpdate) -> None:
        self.manager.apply(update)

    def feed(self, *events: AnyEvent) -> None:
        for event in events:
            self.engine.observe(event)

    def changes(self) -> list[tuple[str, Change, float | None]]:
        return [(alert.rule, change, alert.value) for alert, change in self.recorder.got]

    def crash(self) -> None:
        self.manager.store.close()  # no flush, no saved engine state


THRESHOLD = """
rules:
  - {id: hot, kind: threshold, severity: warning, match: {metric: m}, op: ">=", threshold: 100}
"""


def test_after_a_crash_the_engine_resolves_what_the_store_has_firing(db: Path) -> None:
    """The chaos checker's finding: fire, crash before the engine's state was saved, resolve."""
    before = Site(db, THRESHOLD)
    before.feed(rs.tel(0, 150))
    assert before.changes() == [("hot", "firing", 150.0)]
    before.crash()
    after = Site(db, THRESHOLD)  # nothing saved: the engine alone would think nothing fires
    after.feed(rs.tel(10, 50))
    assert after.changes() == [("hot", "resolved", 50.0)] and after.manager.list() == []
    after.feed(rs.tel(20, 160), rs.tel(30, 170))
    assert after.changes()[1:] == [("hot", "firing", 160.0)]


def test_after_a_crash_a_state_saved_while_firing_does_not_swallow_the_next_episode(db: Path) -> None:
    before = Site(db, THRESHOLD)
    before.feed(rs.tel(0, 150))
    saved = before.engine.dump_state()  # firing
    before.feed(rs.tel(5, 50))  # resolved, stored; the saved state is not updated
    before.crash()
    after = Site(db, THRESHOLD, state=saved)
    after.feed(rs.tel(10, 160))
    after.feed(rs.tel(20, 40))
    assert after.changes() == [("hot", "firing", 160.0), ("hot", "resolved", 40.0)]
    first, second = before.recorder.got[0][0], after.recorder.got[0][0]
    assert first.id != second.id and first.fingerprint == second.fingerprint


def test_a_pending_alert_fires_when_its_for_runs_out_after_a_crash(db: Path) -> None:
    rules = """
rules:
  - {id: hot, kind: threshold, severity: warning, match: {metric: m}, op: ">=", threshold: 100, for: 10m}
"""
    before = Site(db, rules)
    before.feed(rs.tel(0, 150))
    before.crash()
    after = Site(db, rules, started="1m")
    after.engine.advance(rs.at("9m"))
    assert after.changes() == []
    after.engine.advance(rs.at("11m"))
    assert after.changes() == [("hot", "firing", 150.0)]
    [alert] = after.manager.list()
    assert (alert.started_at, alert.fired_at) == (rs.at(0), rs.at("10m"))


def test_the_hysteresis_latch_follows_the_store(db: Path) -> None:
    rules = """
rules:
  - {id: aqi, kind: threshold, severity: warning, match: {metric: m}, op: ">=", threshold: 151, clear: 120}
"""
    before = Site(db, rules)
    before.feed(rs.tel(0, 160))
    saved = before.engine.dump_state()
    before.crash()
    after = Site(db, rules)  # firing in the store: latched, 130 keeps it firing
    after.feed(rs.tel(10, 130))
    assert after.changes() == []
    after.feed(rs.tel(20, 110), rs.tel(30, 130))  # resolved below 120; 130 is not enough to fire again
    assert after.changes() == [("aqi", "resolved", 110.0)]
    after.crash()
    again = Site(db, rules, state=saved)  # the saved state is latched; the store says resolved
    again.feed(rs.tel(40, 130))
    assert again.changes() == []


def test_keep_firing_for_keeps_its_timing_within_the_same_episode(db: Path) -> None:
    rules = """
rules:
  - {id: hot, kind: threshold, severity: warning, match: {metric: m}, op: ">=", threshold: 100,
     keep_firing_for: 5m}
"""
    before = Site(db, rules)
    before.feed(rs.tel(0, 150), rs.tel("1m", 50))  # stopped holding at 1m: firing until 6m
    saved = before.engine.dump_state()
    before.crash()
    after = Site(db, rules, state=saved)
    after.engine.advance(rs.at("5m"))
    assert after.changes() == []
    after.engine.advance(rs.at("7m"))
    assert after.changes() == [("hot", "resolved", 50.0)]
    assert after.manager.list("resolved")[0].resolved_at == rs.at("6m")


def test_an_absent_series_resolves_when_it_comes_back_after_a_crash(db: Path) -> None:
    rules = """
rules:
  - {id: silent, kind: absence, severity: warning, match: {source: s}, group_by: [source], after: 15m}
"""
    before = Site(db, rules)
    before.engine.advance(rs.at("16m"))
    assert before.changes() == [("silent", "firing", None)]
    before.crash()
    after = Site(db, rules, started="20m")  # the grace period alone would not fire before 35m
    after.feed(rs.tel("21m", 1.0))
    assert after.changes() == [("silent", "resolved", None)]


def test_a_window_alert_adopted_after_a_crash_resolves_as_its_samples_expire(db: Path) -> None:
    rules = """
rules:
  - {id: busy, kind: window, severity: warning, match: {metric: m}, aggregate: count, window: 5m,
     op: ">=", threshold: 3}
"""
    before = Site(db, rules)
    before.feed(rs.tel(0, 1), rs.tel(10, 1))
    saved = before.engine.dump_state()  # two samples
    before.feed(rs.tel(20, 1))  # the third fires it; this sample is lost with the process
    before.crash()
    after = Site(db, rules, state=saved)
    after.engine.advance(rs.at("4m"))
    assert after.changes() == []
    after.engine.advance(rs.at("6m"))
    assert after.changes() == [("busy", "resolved", 1.0)]


def test_an_alert_of_a_rule_no_longer_loaded_is_resolved_at_start(db: Path) -> None:
    both = THRESHOLD + """  - {id: cold, kind: threshold, severity: info, match: {metric: m}, op: "<", threshold: 0}
"""
    before = Site(db, both)
    before.feed(rs.tel(0, -5))
    assert before.changes() == [("cold", "firing", -5.0)]
    before.crash()
    after = Site(db, THRESHOLD, started="1m")
    assert after.changes() == [("cold", "resolved", -5.0)] and after.manager.list() == []
    assert after.manager.list("resolved")[0].resolved_at == rs.at("1m")


def test_the_store_removes_exactly_the_settled_rows(db: Path) -> None:
    store = AlertStore(db)
    rows = [OutboxRow(seq, "hook", f"n-{seq}", "firing", b"{}") for seq in range(1, 11)]
    store.commit([], rows)
    store.outbox_done([9, 2, 3, 4, 7, 2])  # out of order, repeated, in runs and alone
    assert [row.seq for row in store.outbox()] == [1, 5, 6, 8, 10]
    assert store.outbox_counts() == {"hook": 5}
    store.outbox_done([1, 5, 6, 8, 10])
    assert store.outbox() == [] and store.outbox_counts() == {}
    store.close()
