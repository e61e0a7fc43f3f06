"""`muted` and `unmuted` notification ids are derived, the same on every node (issue 11): from the alert, the
change and what mutes it (the inhibiting alert's episode, or the silence's id and version), so a new leader
that records a muting change the old leader told without storing it tells it under the same id, and the
receiver drops the repeat. Two managers with stores of their own stand for the two leaders."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from ioc.rules.updates import AlertUpdate, fingerprint

from ioc.alerts.alert import Alert
from ioc.alerts.config import AlertsSettings, InhibitRuleSettings
from ioc.alerts.inhibit import Inhibitor, InhibitRule
from ioc.alerts.manager import AlertManager
from ioc.alerts.silence import SilenceRequest
from ioc.alerts.store import AlertStore
from tests.doubles import RecordingHook, SettableClock

T0 = 1_772_409_600.0  # 2026-03-02T00:00:00Z
INHIBIT = {"source_matchers": ["rule = coverage-outage"], "target_matchers": ["rule = cell-down"], "equal": ["area"]}


def muting(hook: RecordingHook) -> list[tuple[str, str, str]]:
    """What a receiver got of muting: (rule, change, notification id)."""
    return [(note.alert.rule, note.change, note.id) for note in hook.got if note.change in ("muted", "unmuted")]


class Leader:
    def __init__(self, path: Path, clock: SettableClock) -> None:
        self.hook = RecordingHook()
        settings = AlertsSettings(inhibit=[InhibitRuleSettings.model_validate(INHIBIT)])
        self.alerts = AlertManager(AlertStore(path), settings=settings, notifiers=[self.hook], clock=clock)


@pytest.fixture
def leaders(tmp_path: Path) -> Iterator[tuple[Leader, Leader]]:
    made = Leader(tmp_path / "a.db", SettableClock(T0)), Leader(tmp_path / "b.db", SettableClock(T0))
    yield made
    for leader in made:
        leader.alerts.close()


def update(rule: str, state: str, at: float, area: str = "22723") -> AlertUpdate:
    return AlertUpdate(rule=rule, labels={"area": area}, severity="warning", state=state,  # type: ignore[arg-type]
                       summary=rule, value=1.0, at=at)


def test_an_inhibition_mutes_and_unmutes_under_the_same_ids_on_two_leaders(leaders: tuple[Leader, Leader]) -> None:
    for leader in leaders:
        apply = leader.alerts.apply
        apply(update("cell-down", "firing", T0))
        apply(update("coverage-outage", "firing", T0 + 60))  # mutes the cell
        apply(update("coverage-outage", "resolved", T0 + 120))  # unmutes it
        apply(update("coverage-outage", "firing", T0 + 180))  # a new outage episode mutes it again
    a, b = (muting(leader.hook) for leader in leaders)
    assert [(rule, change) for rule, change, _ in a] == [("cell-down", "muted"), ("cell-down", "unmuted"),
                                                        ("cell-down", "muted")]
    assert a == b  # the same ids: a receiver keeps each once
    assert len({nid for _, _, nid in a}) == 3  # the second muting (another episode) is another change


def test_a_silence_mutes_and_unmutes_under_the_same_ids_on_two_leaders(tmp_path: Path) -> None:
    clock = SettableClock(T0)
    first = Leader(tmp_path / "a.db", clock)
    first.alerts.apply(update("cell-down", "firing", T0))
    starts = datetime.fromtimestamp(T0 + 60, UTC).isoformat()
    request = SilenceRequest.parse({"matchers": [{"name": "area", "value": "22723"}], "starts_at": starts,
                                    "duration": "1h"})
    silence = first.alerts.create_silence(request, actor="truc-ban")  # pending: mutes nothing yet
    first.alerts.close()
    shutil.copy(tmp_path / "a.db", tmp_path / "b.db")  # both leaders hold the alert and the silence
    a, b = Leader(tmp_path / "a.db", clock), Leader(tmp_path / "b.db", clock)
    try:
        clock.now = T0 + 61
        for leader in (a, b):
            leader.alerts.tick()
        clock.now = T0 + 3700
        for leader in (a, b):
            leader.alerts.tick()
        assert [change for _, change, _ in muting(a.hook)] == ["muted", "unmuted"]
        assert muting(a.hook) == muting(b.hook)
        assert all(note.alert.silenced_by in ((silence.id,), ()) for note in a.hook.got)
    finally:
        a.alerts.close()
        b.alerts.close()


def test_the_inhibiting_source_is_the_earliest_fired_whatever_the_order_held() -> None:
    rule = InhibitRule.from_settings(InhibitRuleSettings.model_validate(INHIBIT))

    def alert(rule: str, fired_at: float, cause: str = "") -> Alert:
        labels = {"area": "22723", **({"cause": cause} if cause else {})}
        return Alert(id=f"{rule}{cause}", fingerprint=fingerprint(rule, labels), rule=rule, severity="warning",
                     state="firing", labels=labels, summary="", value=None, started_at=fired_at, fired_at=fired_at)

    early, late = alert("coverage-outage", T0, "power"), alert("coverage-outage", T0 + 5, "fiber")
    cell = alert("cell-down", T0)
    found = []
    for order in ([early, late], [late, early]):
        inhibitor = Inhibitor([rule])
        inhibitor.set_sources(order)
        found.append(inhibitor.inhibited_by(cell))
    assert found == [early.fingerprint, early.fingerprint]
