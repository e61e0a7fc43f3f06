"""Muting: the stages of the notification pipeline that decide whether an alert's change is paged.

As in Alertmanager's `notify` pipeline, inhibition and silences are two stages behind one interface,
`Muter` (Alertmanager's `types.Muter`): is this alert muted now, and by whom? Inhibition runs first, then
silences; each stage writes who mutes the alert onto it (`Alert.inhibited_by`, `Alert.silenced_by`), so
every notifier after them reads one flag, `Alert.silenced`, and decides what a muted alert gets (the
record-keepers take every change; the pagers skip muted alerts: docs/rules.md).

Muting is derived; what was last told of it is stored with the alert (`ioc.alerts.manager`).
`Muting.refresh` works it out again for the active alerts when what the stages look at changes: a silence
made, updated or expired, or passing its start or end (`due`), or an inhibiting alert starting or
stopping to fire (`sources_changed`). `muting_change` says whether an alert
became muted or unmuted, and names the change's cause as every node of a cluster does (its notification
id is derived from it: `ioc.alerts.outbox`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Protocol

from ioc.alerts.alert import Alert, Change
from ioc.alerts.errors import SilenceNotFound
from ioc.alerts.inhibit import Inhibitor
from ioc.alerts.outbox import muting_cause
from ioc.alerts.silence import Silences


class Muter(Protocol):
    """Whether an alert is muted now, and by whom (silence ids, or the fingerprints of the alerts that
    inhibit it). `mutes(alert, now)` is `bool(muted_by(alert, now))`."""

    def muted_by(self, alert: Alert, now: float) -> tuple[str, ...]: ...

    def mutes(self, alert: Alert, now: float) -> bool: ...


class InhibitStage:
    """Sets `inhibited_by`: the fingerprint of a firing alert that inhibits this one (or None)."""

    def __init__(self, muter: Muter) -> None:
        self.muter = muter

    def apply(self, alert: Alert, now: float) -> Alert:
        found = self.muter.muted_by(alert, now)
        inhibited_by = found[0] if found else None
        return alert if inhibited_by == alert.inhibited_by else replace(alert, inhibited_by=inhibited_by)


class SilenceStage:
    """Sets `silenced_by`: the ids of the active silences that match the alert."""

    def __init__(self, muter: Muter) -> None:
        self.muter = muter

    def apply(self, alert: Alert, now: float) -> Alert:
        silenced_by = self.muter.muted_by(alert, now)
        return alert if silenced_by == alert.silenced_by else replace(alert, silenced_by=silenced_by)


class Muting:
    """The muting stages in order (inhibition, then silences) over the daemon's silences and inhibition
    rules. Not thread-safe on its own: the `AlertManager` calls it under its lock."""

    def __init__(self, silences: Silences, inhibitor: Inhibitor) -> None:
        self.silences = silences
        self.inhibitor = inhibitor
        self.inhibit = InhibitStage(inhibitor)
        self.silence = SilenceStage(silences)
        self._next_check: float | None = None  # when a silence next starts or ends

    def apply(self, alert: Alert, now: float) -> Alert:
        """The alert with its muting worked out by every stage (the same object when nothing changed)."""
        return self.silence.apply(self.inhibit.apply(alert, now), now)

    def sources_changed(self, alert: Alert, active: Iterable[Alert]) -> bool:
        """After `alert` fired or resolved: whether it may inhibit others; then the inhibitor takes the
        firing ones of `active` as its sources, and `refresh(..., silences=False)` is due."""
        if alert.state == "pending" or not self.inhibitor.rules or not self.inhibitor.is_source(alert):
            return False
        self.inhibitor.set_sources(active)
        return True

    def due(self, now: float) -> bool:
        """Whether a silence started or ended since the last `refresh` of the silences."""
        return self._next_check is not None and now >= self._next_check

    def refresh(self, alerts: Iterable[Alert], now: float, *, silences: bool = True) -> list[Alert]:
        """The alerts whose muting changed, updated. `silences=False`: only inhibition changed (the
        silences did not), so only the alerts an inhibition rule may target are looked at again."""
        changed = []
        for alert in alerts:
            if silences:
                updated = self.apply(alert, now)
            elif self.inhibitor.is_target(alert):
                updated = self.inhibit.apply(alert, now)
            else:
                continue
            if updated is not alert:
                changed.append(updated)
        if silences:
            self._next_check = self.silences.next_transition(now)
        return changed


def muting_change(updated: Alert, was: Alert | None, silences: Silences,
                  source: Callable[[str], Alert | None]) -> tuple[Change, str] | None:
    """Whether `updated` (its muting worked out again) became muted or unmuted against `was`, and what
    that change is about, as every node names it (`ioc.alerts.outbox.muting_cause`): the silences that
    mute it (muted it, for `unmuted`) with their start (end) and last update, and the episode of the
    alert that inhibits it (`source`: the alert of a fingerprint, if still known). None: no change."""
    if was is None or updated.silenced == was.silenced:
        return None
    change: Change = "muted" if updated.silenced else "unmuted"
    muted = updated if updated.silenced else was
    found = []
    for silence_id in muted.silenced_by:
        try:
            silence = silences.get(silence_id)
        except SilenceNotFound:  # purged meanwhile: its id alone
            found.append((silence_id, ""))
            continue
        at = silence.starts_at if change == "muted" else silence.ends_at
        found.append((silence_id, f"{at!r}/{silence.updated_at!r}"))
    inhibiting = muted.inhibited_by
    if inhibiting is not None:
        alert = source(inhibiting)
        inhibiting = alert.id if alert is not None else inhibiting
    return change, muting_cause(found, inhibiting)
