"""Inhibition (ioc.alerts.inhibit): Alertmanager's rules plus `within_area`, with a small fake registry
(the real `ioc.areas.AreaRegistry` answers the same `is_within`)."""

from __future__ import annotations

from datetime import date
from typing import ClassVar

import pytest
from ioc.rules.updates import AlertUpdate, fingerprint
from pydantic import ValidationError

from ioc.alerts.alert import Alert, Change
from ioc.alerts.config import AlertsSettings, InhibitRuleSettings
from ioc.alerts.inhibit import Inhibitor, InhibitRule
from ioc.alerts.manager import AlertManager
from ioc.alerts.store import AlertStore
from ioc.errors import ConfigError

T0 = 1_772_409_600.0


class FakeAreas:
    """Province 60 with communes 22723 and 22724; province 62 with commune 23000."""

    PARENT: ClassVar[dict[str, str | None]] = {"22723": "60", "22724": "60", "23000": "62", "60": None,
                                               "62": None}

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, date | None]] = []

    def is_within(self, code: str, ancestor: str, at: date | None = None) -> bool:
        self.asked.append((code, ancestor, at))
        current: str | None = code
        while current is not None:
            if current == ancestor:
                return True
            current = self.PARENT.get(current)
        return False


OUTAGE_RULE = InhibitRuleSettings.model_validate({
    "source_matchers": ["rule = coverage-outage"],
    "target_matchers": ['rule =~ "coverage-outage|cell-down"'],
    "within_area": True,
})


def alert(rule: str, area: str, state: str = "firing", **labels: str) -> Alert:
    all_labels = {"area": area, **labels}
    return Alert(id=f"{rule}-{area}-{labels}", fingerprint=fingerprint(rule, all_labels), rule=rule,
                 severity="critical", state=state, labels=all_labels, summary="", value=None,  # type: ignore[arg-type]
                 started_at=T0)


def inhibitor(*alerts: Alert, rule: InhibitRuleSettings = OUTAGE_RULE) -> Inhibitor:
    found = Inhibitor([InhibitRule.from_settings(rule)], FakeAreas())
    found.set_sources(alerts)
    return found


def test_a_province_outage_mutes_its_communes_outages_and_cells() -> None:
    province = alert("coverage-outage", "60")
    commune = alert("coverage-outage", "22723")
    cell = alert("cell-down", "22724", entity="BTN0123")
    elsewhere = alert("cell-down", "23000", entity="NTH0001")
    other_rule = alert("aqi-bad", "22723")
    found = inhibitor(province, commune, cell, elsewhere, other_rule)
    assert found.inhibited_by(commune) == province.fingerprint
    assert found.inhibited_by(cell) == province.fingerprint
    assert found.inhibited_by(elsewhere) is None  # another province
    assert found.inhibited_by(other_rule) is None  # not a target
    assert found.inhibited_by(province) is None  # never itself, and no commune is above it


def test_two_communes_outages_do_not_mute_each_other() -> None:
    a, b = alert("coverage-outage", "22723"), alert("coverage-outage", "22724")
    found = inhibitor(a, b)
    assert not found.mutes(a) and not found.mutes(b)


def test_two_sided_alerts_of_one_area_do_not_mute_each_other() -> None:
    rule = InhibitRuleSettings.model_validate({"source_matchers": ["rule = coverage-outage"],
                                               "target_matchers": ["rule = coverage-outage"],
                                               "within_area": True})
    a = alert("coverage-outage", "22723", operator="viettel")
    b = alert("coverage-outage", "22723", operator="vnpt")
    found = inhibitor(a, b, rule=rule)
    assert not found.mutes(a) and not found.mutes(b)


def test_only_a_firing_source_inhibits() -> None:
    province = alert("coverage-outage", "60", state="pending")
    commune = alert("cell-down", "22723")
    assert not inhibitor(province, commune).mutes(commune)


def test_equal_labels_must_have_the_same_values() -> None:
    rule = InhibitRuleSettings.model_validate({
        "source_matchers": [{"name": "rule", "value": "source-silent"}],
        "target_matchers": [{"name": "severity", "value": "info|warning", "op": "=~"}],
        "equal": ["source"],
    })
    silent = alert("source-silent", "60", source="qtmt-aqi")
    same_source = alert("aqi-hour-avg", "22723", source="qtmt-aqi")
    warning = Alert(id="w", fingerprint="w" * 16, rule="aqi-hour-avg", severity="warning", state="firing",
                    labels={"area": "22723", "source": "qtmt-aqi"}, summary="", value=None, started_at=T0)
    other = Alert(id="o", fingerprint="o" * 16, rule="aqi-hour-avg", severity="warning", state="firing",
                  labels={"area": "22723", "source": "dvc-binhthuan"}, summary="", value=None, started_at=T0)
    found = Inhibitor([InhibitRule.from_settings(rule)])
    found.set_sources([silent, same_source, warning, other])
    assert found.inhibited_by(warning) == silent.fingerprint
    assert not found.mutes(other)
    assert not found.mutes(same_source)  # critical: not a target


def test_within_area_needs_the_registry() -> None:
    with pytest.raises(ConfigError, match=r"alerts.inhibit.0.within_area: needs the area registry"):
        Inhibitor([InhibitRule.from_settings(OUTAGE_RULE)], None)


def test_bad_matchers_in_config_are_refused_with_their_place() -> None:
    with pytest.raises(ValidationError) as caught:
        AlertsSettings.model_validate({"inhibit": [{"source_matchers": ["rule =~ ("],
                                                    "target_matchers": ["rule = x"], "typo": 1}]})
    text = str(caught.value)
    assert "inhibit.0.source_matchers.0" in text and "not a valid regular expression" in text
    assert "inhibit.0.typo" in text


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.got: list[tuple[Alert, Change]] = []

    def notify(self, alert: Alert, change: Change) -> None:
        self.got.append((alert, change))


def outage(state: str, area: str, at: float, rule: str = "coverage-outage", **labels: str) -> AlertUpdate:
    return AlertUpdate(rule=rule, labels={"area": area, **labels}, severity="critical",
                       state=state, summary="", value=60.0, at=at)  # type: ignore[arg-type]


def test_the_manager_mutes_and_unmutes_targets_as_the_source_fires_and_resolves(store_url: str) -> None:
    recorder = Recorder()
    settings = AlertsSettings.model_validate({"inhibit": [OUTAGE_RULE.model_dump()]})
    manager = AlertManager(AlertStore(store_url), settings=settings, notifiers=[recorder],
                           areas=FakeAreas(), clock=lambda: T0)
    cell = manager.apply(outage("firing", "22723", T0, rule="cell-down", entity="BTN0123"))
    assert cell is not None and not cell.silenced
    manager.apply(outage("pending", "60", T0 + 1))
    assert not manager.get(cell.id).silenced  # a pending source inhibits nothing
    province = manager.apply(outage("firing", "60", T0 + 2))
    assert province is not None and not province.silenced
    muted = manager.get(cell.id)
    assert muted.silenced and muted.inhibited and muted.inhibited_by == province.fingerprint
    assert muted.as_json()["silenced"] is True and muted.as_json()["inhibited"] is True
    assert [(a.rule, c) for a, c in recorder.got][-2:] == [("coverage-outage", "firing"),
                                                          ("cell-down", "muted")]
    # A commune's outage that fires while the province's does is muted from its first change.
    commune = manager.apply(outage("firing", "22724", T0 + 3))
    assert commune is not None and commune.silenced and recorder.got[-1] == (commune, "firing")
    manager.apply(outage("resolved", "60", T0 + 4))
    assert {(a.rule, a.labels["area"], c) for a, c in recorder.got[-2:]} == {
        ("cell-down", "22723", "unmuted"), ("coverage-outage", "22724", "unmuted")}
    assert not manager.get(cell.id).silenced and not manager.get(commune.id).silenced
    manager.close()
