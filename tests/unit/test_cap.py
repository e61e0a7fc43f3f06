"""CAP 1.2 messages (ioc.cap): Alert, Update and Cancel from a public rule's alert, each valid against the
OASIS CAP 1.2 schema shipped in the package (ioc/data/cap/CAP-v1.2.xsd, validated with xmlschema), with the
area's registry name, GSO geocode and circle, both languages, escaping, and what publishes nothing."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from importlib import resources
from pathlib import Path

import pytest
import xmlschema
from ioc.rules.loader import parse_rules

from ioc.alerts.alert import Alert
from ioc.areas import AreaRegistry
from ioc.cap.config import CapSettings
from ioc.cap.message import CAP_NS
from ioc.cap.publisher import CapPublisher, category_of
from ioc.cap.store import CapStore

NS = {"cap": CAP_NS}
T0 = 1_772_413_200.0  # 2026-03-02T08:00:00+07:00

RULES = parse_rules("""\
rules:
  - id: aqi-bad
    kind: threshold
    severity: critical
    match: {type: telemetry, metric: env.aqi}
    group_by: [area]
    op: ">="
    threshold: 151
    summary: "Chất lượng không khí xấu tại {{ area_name }}: VN_AQI {{ value }}"
    public: true
    cap:
      event: Chất lượng không khí xấu
      event_en: Bad air quality
      summary_en: "Bad air in {{ area_name }}: VN_AQI {{ value }} (threshold {{ threshold }})"
      instruction: Hạn chế ra ngoài.
  - id: cell-down
    kind: status
    severity: warning
    match: {type: status, source: viettel-ran}
    group_by: [entity, area]
    states: [down]
    summary: "Trạm {{ entity }} mất sóng"
    public: true
  - id: internal
    kind: threshold
    severity: critical
    match: {type: telemetry, metric: x}
    op: ">"
    threshold: 1
""")


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(resources.files("ioc.data").joinpath("cap/CAP-v1.2.xsd")))


@pytest.fixture(scope="module")
def areas() -> AreaRegistry:
    return AreaRegistry.default()


@pytest.fixture
def commune(areas: AreaRegistry) -> str:
    """A commune of Lâm Đồng (68) in the registry on the test's dates, with its centre."""
    found = next(unit for unit in areas.children("68") if unit.level == "commune" and unit.lat is not None)
    return found.code


@pytest.fixture
def publisher(tmp_path: Path, areas: AreaRegistry) -> CapPublisher:
    clock = iter(T0 + 60 * n for n in range(100))
    return CapPublisher(CapStore(tmp_path / "ioc.db", keep=50), rules=RULES.get, areas=areas, default_area="68",
                        settings=CapSettings(sender="ioc.lamdong.gov.vn"), clock=lambda: next(clock))


def firing(area: str, summary: str = "Chất lượng không khí xấu tại X: VN_AQI 180", *, rule: str = "aqi-bad",
           value: float = 180.0, **labels: str) -> Alert:
    return Alert(id="a" * 32, fingerprint="f1", rule=rule, severity="critical", state="firing",
                 labels={"area": area, **labels}, summary=summary, value=value, started_at=T0, fired_at=T0)


def parse(xml: bytes) -> ET.Element:
    return ET.fromstring(xml)


def text(root: ET.Element, path: str) -> list[str]:
    return [element.text or "" for element in root.findall(path, NS)]


def test_alert_update_and_cancel_are_valid_cap_and_refer_to_what_came_before(
        publisher: CapPublisher, schema: xmlschema.XMLSchema, areas: AreaRegistry, commune: str) -> None:
    alert = firing(commune)
    publisher.notify(alert, "firing")
    publisher.notify(replace(alert, summary="Chất lượng không khí xấu tại X: VN_AQI 240", value=240.0), "firing")
    publisher.notify(replace(alert, state="resolved", resolved_at=T0 + 600, value=100.0), "resolved")
    first, update, cancel = reversed(publisher.store.latest())
    assert [m.msg_type for m in (first, update, cancel)] == ["Alert", "Update", "Cancel"]
    for message in (first, update, cancel):
        schema.validate(message.xml.decode())  # raises with the reason when it is not valid
        root = parse(message.xml)
        assert text(root, "cap:identifier") == [message.identifier]
        assert text(root, "cap:sender") == ["ioc.lamdong.gov.vn"]
        assert text(root, "cap:status") + text(root, "cap:scope") == ["Actual", "Public"]
        assert text(root, "cap:msgType") == [message.msg_type]
        assert text(root, "cap:incidents") == [alert.id]
        assert text(root, "cap:info/cap:language") == ["vi-VN", "en-US"]
        assert text(root, "cap:info/cap:category") == ["Env", "Env"]
        assert text(root, "cap:info/cap:event") == ["Chất lượng không khí xấu", "Bad air quality"]
        unit = areas.get(commune)
        assert unit is not None and unit.lat is not None and unit.lon is not None
        names = [unit.name, *(above.name for above in areas.ancestors(commune))]
        assert text(root, "cap:info/cap:area/cap:areaDesc") == [", ".join(names)] * 2
        assert names[-1] == "Tỉnh Lâm Đồng"
        assert text(root, "cap:info/cap:area/cap:geocode/cap:valueName") == ["GSO", "GSO"]
        assert text(root, "cap:info/cap:area/cap:geocode/cap:value") == [commune, commune]
        lat, lon, radius = text(root, "cap:info/cap:area/cap:circle")[0].replace(",", " ").split()
        assert abs(float(lat) - unit.lat) < 1e-4 and abs(float(lon) - unit.lon) < 1e-4
        assert radius == "5"  # km around a commune's centre
        assert text(root, "cap:sent")[0].endswith("+07:00")
    root = parse(first.xml)
    assert text(root, "cap:references") == []
    assert text(root, "cap:info/cap:urgency") + text(root, "cap:info/cap:severity") + \
        text(root, "cap:info/cap:certainty") == ["Immediate", "Immediate", "Severe", "Severe", "Observed",
                                                  "Observed"]
    assert text(root, "cap:info/cap:headline")[0] == "Chất lượng không khí xấu tại X: VN_AQI 180"
    assert text(root, "cap:info/cap:headline")[1] == f"Bad air in {areas.get(commune).name}: VN_AQI 180 " \
                                                     "(threshold 151)"  # type: ignore[union-attr]
    assert text(root, "cap:info/cap:instruction") == ["Hạn chế ra ngoài."]
    assert text(root, "cap:info/cap:onset")[0] == "2026-03-02T08:00:00+07:00"
    # An Update refers to the Alert; the Cancel to both, as `sender,identifier,sent` triplets.
    assert text(parse(update.xml), "cap:references") == [
        f"ioc.lamdong.gov.vn,{first.identifier},2026-03-02T08:00:00+07:00"]
    cancelled = parse(cancel.xml)
    assert text(cancelled, "cap:references")[0].split() == [
        f"ioc.lamdong.gov.vn,{m.identifier},{text(parse(m.xml), 'cap:sent')[0]}" for m in (first, update)]
    assert text(cancelled, "cap:info/cap:responseType") == ["AllClear", "AllClear"]
    assert text(cancelled, "cap:info/cap:urgency")[0] == "Past"
    assert text(cancelled, "cap:info/cap:headline")[1].startswith("All clear: ")
    assert publisher.published == {"Alert": 1, "Update": 1, "Cancel": 1}


def test_what_publishes_nothing(publisher: CapPublisher, commune: str) -> None:
    alert = firing(commune)
    publisher.notify(replace(alert, state="pending", fired_at=None), "pending")  # not yet public
    publisher.notify(replace(alert, state="resolved"), "resolved")  # never published: nothing to cancel
    publisher.notify(replace(alert, rule="internal"), "firing")  # not a public rule
    publisher.notify(replace(alert, rule="gone"), "firing")  # a rule no longer loaded
    assert publisher.store.latest() == []
    publisher.notify(alert, "firing")
    publisher.notify(alert, "acknowledged")  # the operators' business
    publisher.notify(alert, "muted")
    publisher.notify(alert, "firing")  # told again with nothing changed: no Update
    publisher.notify(replace(alert, state="resolved"), "resolved")
    publisher.notify(replace(alert, state="resolved"), "resolved")  # cancelled once
    assert [m.msg_type for m in reversed(publisher.store.latest())] == ["Alert", "Cancel"]


def test_text_is_escaped_and_the_province_stands_in_for_a_missing_area(
        publisher: CapPublisher, schema: xmlschema.XMLSchema) -> None:
    nasty = 'Trạm <BTN&01> "x" ]]> mất sóng'
    alert = Alert(id="b" * 32, fingerprint="f2", rule="cell-down", severity="warning", state="firing",
                  labels={"entity": "<BTN&01>"}, summary=nasty, value=None, started_at=T0, fired_at=T0)
    publisher.notify(alert, "firing")
    (message,) = publisher.store.latest()
    schema.validate(message.xml.decode())
    root = parse(message.xml)
    assert text(root, "cap:info/cap:headline") == [nasty]  # round-trips: escaped, not mangled
    assert text(root, "cap:info/cap:language") == ["vi-VN"]  # no English summary: one info
    assert text(root, "cap:info/cap:category") == ["Infra"]
    assert text(root, "cap:info/cap:event") == ["cell-down"]
    assert text(root, "cap:info/cap:urgency") + text(root, "cap:info/cap:severity") == ["Expected", "Moderate"]
    assert text(root, "cap:info/cap:area/cap:areaDesc") == ["Tỉnh Lâm Đồng"]
    assert text(root, "cap:info/cap:area/cap:geocode/cap:value") == ["68"]


def test_a_message_breaking_the_schema_is_caught(schema: xmlschema.XMLSchema, publisher: CapPublisher,
                                                 commune: str) -> None:
    """The validation is real: the same message with an invented msgType, or without its sender, fails."""
    publisher.notify(firing(commune), "firing")
    (message,) = publisher.store.latest()
    xml = message.xml.decode()
    assert schema.is_valid(xml)
    assert not schema.is_valid(xml.replace("<msgType>Alert</msgType>", "<msgType>Warning</msgType>"))
    assert not schema.is_valid(xml.replace("<sender>ioc.lamdong.gov.vn</sender>", ""))
    assert not schema.is_valid(xml.replace("+07:00</sent>", ".5+07:00</sent>"))


def test_categories_default_from_what_the_rule_watches() -> None:
    assert [category_of(rule) for rule in RULES] == ["Env", "Infra", "Other"]


def test_a_bad_sender_is_refused() -> None:
    with pytest.raises(ValueError, match="CAP sender"):
        CapSettings(sender="ioc center")


def test_the_store_keeps_the_newest(tmp_path: Path, areas: AreaRegistry, commune: str) -> None:
    publisher = CapPublisher(CapStore(tmp_path / "ioc.db", keep=3), rules=RULES.get, areas=areas)
    for n in range(5):
        publisher.notify(replace(firing(commune), id=f"{n:032x}"), "firing")
    assert [m.alert_id[-1] for m in publisher.store.latest()] == ["4", "3", "2"]
    # Kept in the file: a new store on it (a restart) has them.
    assert len(CapStore(tmp_path / "ioc.db", keep=3).latest()) == 3


def test_messages_are_counted(publisher: CapPublisher, commune: str) -> None:
    publisher.notify(firing(commune), "firing")
    publisher.notify(replace(firing(commune), state="resolved"), "resolved")
    samples = {s.labels["msg_type"]: s.value for m in publisher.metrics() for s in m.samples
               if s.name == "ioc_cap_messages_total"}
    assert samples == {"Alert": 1.0, "Update": 0.0, "Cancel": 1.0}
