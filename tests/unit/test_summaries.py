"""Rule summaries per language (`summary: {vi, en}`, a single string still allowed): loaded and checked like
one summary, rendered by the engine with each language's decimal mark, kept by the alert (stored, and in its
JSON as `summaries`), and the firing one kept when it resolves."""

from __future__ import annotations

from pathlib import Path

import pytest
from ioc.rules.loader import load_rules

from ioc.alerts.manager import AlertManager
from ioc.alerts.store import AlertStore
from ioc.areas import AreaRegistry
from ioc.errors import ConfigError
from tests.unit.rules_support import Recorder, tel

AREAS = AreaRegistry.national(["68"])

RULE = """
rules:
  - id: aqi-bad
    kind: threshold
    severity: critical
    match: {{metric: env.aqi}}
    group_by: [area]
    op: ">="
    threshold: 151
    clear: 120
    summary: {summary}
"""
BOTH = ('{vi: "Không khí xấu tại {{ area_name }}: VN_AQI {{ value }}", '
        'en: "Bad air in {{ area_name }}: VN_AQI {{ value }}"}')


def load(tmp_path: Path, summary: str) -> object:
    path = tmp_path / "r.yaml"
    path.write_text(RULE.format(summary=summary), encoding="utf-8")
    return load_rules([path])


def test_a_summary_per_language_or_a_single_one(tmp_path: Path) -> None:
    rule = load(tmp_path, BOTH).get("aqi-bad")  # type: ignore[attr-defined]
    assert rule.summary_vi == "Không khí xấu tại {{ area_name }}: VN_AQI {{ value }}"
    assert rule.summary_en == "Bad air in {{ area_name }}: VN_AQI {{ value }}"
    single = load(tmp_path, '"VN_AQI {{ value }}"').get("aqi-bad")  # type: ignore[attr-defined]
    assert (single.summary, single.summary_vi, single.summary_en) == ("VN_AQI {{ value }}", "VN_AQI {{ value }}", "")
    assert single.template_en() is None


@pytest.mark.parametrize(("summary", "problem"), [
    ('{vi: "x", en: "{{ nope }}"}', "summary.en: unknown name 'nope'"),
    ('{vi: "{{ nope }}"}', "summary.vi: unknown name 'nope'"),
    ('{en: "only English"}', "vi"),
    ('{vi: "x", fr: "y"}', "fr"),
])
def test_each_language_is_checked_as_a_template(tmp_path: Path, summary: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, summary)
    assert any(problem in line for line in caught.value.problems), caught.value.problems


def test_the_engine_renders_both_with_their_decimal_marks(tmp_path: Path) -> None:
    r = Recorder(RULE.format(summary=BOTH), areas=AREAS)
    r.feed(tel(0, 170.256, metric="env.aqi", area="22945"))
    [update] = r.updates
    assert update.summary == "Không khí xấu tại Phường Phan Thiết: VN_AQI 170,26"
    assert update.summary_en == "Bad air in Phường Phan Thiết: VN_AQI 170.26"
    single = Recorder(RULE.format(summary='"VN_AQI {{ value }}"'), areas=AREAS)
    single.feed(tel(0, 160.5, metric="env.aqi", area="22945"))
    assert (single.updates[0].summary, single.updates[0].summary_en) == ("VN_AQI 160,5", "")


def test_the_alert_keeps_both_stored_and_in_its_json_and_resolves_with_them(tmp_path: Path) -> None:
    r = Recorder(RULE.format(summary=BOTH), areas=AREAS)
    r.feed(tel(0, 180, metric="env.aqi", area="22945"), tel(60, 47.9, metric="env.aqi", area="22945"))
    firing, resolved = r.updates
    manager = AlertManager(AlertStore(tmp_path / "a.db"), clock=lambda: firing.at)
    try:
        alert = manager.apply(firing)
        assert alert is not None
        assert alert.as_json()["summaries"] == {"vi": "Không khí xấu tại Phường Phan Thiết: VN_AQI 180",
                                                "en": "Bad air in Phường Phan Thiết: VN_AQI 180"}
        done = manager.apply(resolved)
        assert done is not None and done.state == "resolved"
        assert done.as_json()["summaries"] == alert.as_json()["summaries"]  # not "VN_AQI 47,9"
        assert done.summary == alert.summary
    finally:
        manager.close()
    reopened = AlertManager(AlertStore(tmp_path / "a.db"), clock=lambda: firing.at)
    try:
        assert reopened.get(alert.id).summary_en == "Bad air in Phường Phan Thiết: VN_AQI 180"  # as stored
    finally:
        reopened.close()


def test_without_an_english_summary_the_json_says_so(tmp_path: Path) -> None:
    r = Recorder(RULE.format(summary='"VN_AQI {{ value }}"'), areas=AREAS)
    r.feed(tel(0, 180, metric="env.aqi", area="22945"))
    manager = AlertManager(AlertStore(tmp_path / "a.db"), clock=lambda: r.updates[0].at)
    try:
        alert = manager.apply(r.updates[0])
        assert alert is not None and alert.as_json()["summaries"] == {"vi": "VN_AQI 180", "en": None}
    finally:
        manager.close()


def test_every_shipped_rule_speaks_both_languages_with_the_same_names() -> None:
    packs = load_rules([Path(__file__).resolve().parents[2] / "rules" / "packs"])
    assert len(packs.rules) >= 10
    for rule in packs.rules:
        assert rule.summary_vi and rule.summary_en, rule.id
        assert sorted(rule.template().names) == sorted(rule.template_en().names), rule.id  # type: ignore[union-attr]
