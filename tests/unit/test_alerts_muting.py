"""The muting stages (`ioc.alerts.muting`): inhibition then silences behind one `Muter`, each writing who
mutes an alert; a refresh after a silence or an inhibiting source changes. Pure logic, no store."""

from __future__ import annotations

from ioc.rules.updates import fingerprint

from ioc.alerts.alert import Alert
from ioc.alerts.config import InhibitRuleSettings
from ioc.alerts.inhibit import Inhibitor, InhibitRule
from ioc.alerts.muting import InhibitStage, Muter, Muting, SilenceStage
from ioc.alerts.silence import SilenceRequest, Silences
from tests.doubles import SettableClock

T0 = 1_772_409_600.0


def alert(rule: str, area: str = "22723", state: str = "firing") -> Alert:
    labels = {"area": area}
    return Alert(id=f"{rule}-{area}", fingerprint=fingerprint(rule, labels), rule=rule, severity="warning",
                 state=state, labels=labels, summary="", value=None, started_at=T0)  # type: ignore[arg-type]


def muting(clock: SettableClock) -> Muting:
    rule = InhibitRule.from_settings(InhibitRuleSettings.model_validate(
        {"source_matchers": ["rule = coverage-outage"], "target_matchers": ["rule = cell-down"], "equal": ["area"]}))
    return Muting(Silences(None, clock=clock), Inhibitor([rule]))


def silence(found: Muting, area: str, **times: str) -> str:
    request = SilenceRequest.parse({"matchers": [{"name": "area", "value": area}], "duration": "1h", **times})
    return found.silences.create(request, actor="op").id


def test_silences_and_the_inhibitor_are_both_muters_saying_who_mutes() -> None:
    clock = SettableClock(T0)
    found = muting(clock)
    outage, cell = alert("coverage-outage"), alert("cell-down")
    found.inhibitor.set_sources([outage])
    silence_id = silence(found, "22724")
    muters: list[Muter] = [found.inhibitor, found.silences]
    assert [m.muted_by(cell, clock.now) for m in muters] == [(outage.fingerprint,), ()]
    assert [m.mutes(alert("cell-down", "22724"), clock.now) for m in muters] == [False, True]
    assert found.silences.muted_by(alert("aqi-bad", "22724"), clock.now) == (silence_id,)


def test_the_stages_write_who_mutes_and_return_the_same_alert_when_nothing_changes() -> None:
    clock = SettableClock(T0)
    found = muting(clock)
    outage, cell = alert("coverage-outage"), alert("cell-down")
    found.inhibitor.set_sources([outage])
    silence_id = silence(found, "22723")
    muted = found.apply(cell, clock.now)
    assert muted.inhibited_by == outage.fingerprint and muted.silenced_by == (silence_id,) and muted.silenced
    assert found.apply(muted, clock.now) is muted
    assert InhibitStage(found.inhibitor).apply(outage, clock.now) is outage  # never inhibits itself
    assert SilenceStage(found.silences).apply(alert("x", "22799"), clock.now).silenced is False


def test_a_firing_source_changes_only_the_inhibition_targets() -> None:
    clock = SettableClock(T0)
    found = muting(clock)
    cell, aqi = alert("cell-down"), alert("aqi-bad")
    pending = alert("coverage-outage", state="pending")
    assert not found.sources_changed(pending, [pending, cell, aqi])  # a pending alert inhibits nothing
    outage = alert("coverage-outage")
    assert not found.sources_changed(aqi, [aqi])  # not a source
    assert found.sources_changed(outage, [outage, cell, aqi])
    changed = found.refresh([outage, cell, aqi], clock.now, silences=False)
    assert [(a.rule, a.inhibited_by) for a in changed] == [("cell-down", outage.fingerprint)]


def test_a_silence_starting_later_is_due_then_and_mutes_on_refresh() -> None:
    clock = SettableClock(T0)
    found = muting(clock)
    cell = alert("cell-down")
    silence(found, "22723", starts_at="2026-03-02T08:00:00+07:00")  # T0 + 1h
    assert found.refresh([cell], clock.now) == [] and not found.due(clock.now)
    clock.now = T0 + 3600
    assert found.due(clock.now)
    [muted] = found.refresh([cell], clock.now)
    assert muted.silenced and not found.due(clock.now)
    clock.now = T0 + 2 * 3600
    assert found.due(clock.now) and found.refresh([muted], clock.now)[0].silenced is False
