"""The 2025 conversion at the intake (CONTRACT §10): a real Pipeline, a recording sink, the national registry.

An event dated from 2025-07-01 with a former code no longer in use is stored in the unit it became, with
the code it carried as the tag `area_former`; before that date, and for codes in use, nothing changes; a
divided commune is refused naming its candidates. Counted in `ioc_area_codes_converted_total{level}`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ioc.areas import REFORM_NS, AreaRegistry
from ioc.ingest.dedup import DedupIndex
from ioc.ingest.pipeline import Pipeline
from ioc.metrics import MetricSource

NOW = 1_800_000_000.0  # 2027-01-15


class RecordingSink:
    name = "recording"

    def __init__(self) -> None:
        self.points: list[str] = []

    def start(self) -> None: ...

    def submit(self, points: list[str], on_durable: Any = None, *args: Any, **kwargs: Any) -> None:
        self.points.extend(points)
        if on_durable is not None:
            on_durable()

    def has_room(self, points: int) -> bool:
        return True

    def problems(self) -> list[str]:
        return []

    def metrics(self) -> MetricSource:
        return list

    def close(self, timeout: float) -> None: ...


def telemetry(event_id: str, area: str, time: str = "2026-03-02T08:00:00+07:00", **fields: Any) -> bytes:
    return orjson.dumps({"id": event_id, "source": "qtmt-aqi", "type": "telemetry", "time": time,
                         "metric": "env.aqi", "value": 100, "area": area, **fields})


@pytest.fixture
def intake() -> tuple[Pipeline, RecordingSink]:
    sink = RecordingSink()
    pipeline = Pipeline(sinks=[sink], dedup=DedupIndex(None, window=3600, max_keys=1000, clock=lambda: NOW),
                        max_bytes=1 << 20, max_future=300, clock=lambda: NOW)  # type: ignore[list-item]
    pipeline.convert_areas(AreaRegistry.default().former, REFORM_NS)
    return pipeline, sink


def converted(pipeline: Pipeline) -> dict[str, float]:
    families = {family.name: family for family in pipeline.metrics()}
    return {sample.labels["level"]: sample.value for sample in families["ioc_area_codes_converted"].samples
            if sample.name.endswith("_total")}


def test_a_former_commune_code_dated_2026_is_stored_in_its_new_commune(intake: tuple[Pipeline, RecordingSink]
                                                                        ) -> None:
    pipeline, sink = intake
    result = pipeline.ingest(telemetry("a", "22915", tags={"station": "Mũi Né"}))  # the former Phường Mũi Né
    assert result.accepted == 1 and not result.rejected
    assert sink.points[0].startswith("env.aqi,source=qtmt-aqi,area=22918,station=Mũi\\ Né,area_former=22915 ")
    assert converted(pipeline) == {"commune": 1, "district": 0, "province": 0}


def test_the_era_of_the_events_time_decides(intake: tuple[Pipeline, RecordingSink]) -> None:
    pipeline, sink = intake
    pipeline.ingest(telemetry("a", "22915", time="2025-06-30T23:59:59+07:00"))  # still Phường Mũi Né
    pipeline.ingest(telemetry("b", "22915", time="2025-06-30T17:00:00Z"))  # 2025-07-01 00:00 in Vietnam
    pipeline.ingest(telemetry("c", "22918", time="2024-05-01T08:00:00+07:00"))  # Phường Hàm Tiến then
    pipeline.ingest(telemetry("d", "22918"))  # the new Phường Mũi Né: in use, kept
    assert [point.split(" ")[0] for point in sink.points] == [
        "env.aqi,source=qtmt-aqi,area=22915", "env.aqi,source=qtmt-aqi,area=22918,area_former=22915",
        "env.aqi,source=qtmt-aqi,area=22918", "env.aqi,source=qtmt-aqi,area=22918"]
    assert converted(pipeline)["commune"] == 1


def test_former_district_and_province_codes_go_to_the_new_province(intake: tuple[Pipeline, RecordingSink]
                                                                    ) -> None:
    pipeline, sink = intake
    status = orjson.dumps({"id": "s", "source": "viettel-ran", "type": "status", "time": "2026-03-02T08:00:00Z",
                           "entity": "BTN-0001", "state": "down", "area": "593"})
    dossier = orjson.dumps({"id": "k", "source": "dvc-binhthuan", "type": "dossier",
                            "time": "2026-03-02T08:00:00Z", "dossier_id": "000.00.20.H10-260302-0001",
                            "procedure": "1.001612", "status": "received", "received_at": "2026-03-02T08:00:00Z",
                            "due_at": "2026-03-05T08:00:00Z", "channel": "online", "level": "province",
                            "area": "60"})
    assert pipeline.ingest(status).accepted == 1 and pipeline.ingest(dossier).accepted == 1
    assert sink.points[0].startswith("status,area=68,area_former=593,entity=BTN-0001,source=viettel-ran ")
    assert sink.points[1].startswith("dossier,area=68,area_former=60,channel=online,")
    assert converted(pipeline) == {"commune": 0, "district": 1, "province": 1}


def test_a_divided_commune_is_refused_naming_its_candidates(intake: tuple[Pipeline, RecordingSink]) -> None:
    pipeline, sink = intake
    result = pipeline.ingest(telemetry("a", "00007"))  # Phường Cống Vị, divided on 2025-07-01
    assert result.accepted == 0 and not sink.points
    assert result.rejected == [(0, ("area: 00007 (Phường Cống Vị) is a former commune divided on 2025-07-01 "
                                    "between 00008 (Phường Ngọc Hà), 00025 (Phường Giảng Võ); send the new "
                                    "commune's code"))]
    assert pipeline.rejected[("qtmt-aqi", "area_divided")] == 1
    assert pipeline.ingest(telemetry("b", "00007", time="2025-01-01T08:00:00+07:00")).accepted == 1  # its era


def test_unknown_codes_and_a_duplicate_are_not_counted_as_converted(intake: tuple[Pipeline, RecordingSink]
                                                                     ) -> None:
    pipeline, sink = intake
    pipeline.ingest(telemetry("a", "99999"))
    pipeline.ingest(telemetry("b", "22915"))
    assert pipeline.ingest(telemetry("b", "22915")).duplicates == 1
    assert [point.split(",")[2] for point in sink.points] == ["area=99999 value=100.0 1772413200000000000",
                                                              "area=22918"]
    assert converted(pipeline)["commune"] == 1


def test_a_vendor_cannot_send_the_area_former_tag(intake: tuple[Pipeline, RecordingSink]) -> None:
    pipeline, _ = intake
    result = pipeline.ingest(telemetry("a", "22918", tags={"area_former": "x"}))
    assert result.accepted == 0 and "'area_former': the name is reserved" in result.rejected[0][1]


def test_without_a_registry_nothing_is_converted() -> None:
    sink = RecordingSink()
    pipeline = Pipeline(sinks=[sink], dedup=DedupIndex(None, window=3600, max_keys=1000, clock=lambda: NOW),
                        max_bytes=1 << 20, max_future=300, clock=lambda: NOW)  # type: ignore[list-item]
    pipeline.ingest(telemetry("a", "22915"))
    assert sink.points[0].startswith("env.aqi,source=qtmt-aqi,area=22915 ")



RULE = """
rules:
  - id: aqi-bad
    kind: threshold
    severity: critical
    match: {metric: env.aqi}
    group_by: [area, area_former]
    op: ">="
    threshold: 151
    summary: "{{ area_name }}"
"""


def test_rule_unit_tests_see_the_events_as_the_intake_hands_them_on() -> None:
    from ioc.rules.loader import parse_rules
    from ioc.rules.testing import Harness, InvalidEvent

    harness = Harness(parse_rules(RULE), start=datetime(2026, 3, 2, 8, 0, tzinfo=UTC))
    harness.feed({"id": "a", "source": "qtmt-aqi", "type": "telemetry", "metric": "env.aqi", "value": 180,
                  "area": "22915"}, at=0)
    [update] = harness.updates
    assert update.labels == {"area": "22918", "area_former": "22915"} and update.summary == "Phường Mũi Né"
    with pytest.raises(InvalidEvent, match="00008 \\(Phường Ngọc Hà\\), 00025 \\(Phường Giảng Võ\\)"):
        harness.feed({"id": "b", "source": "qtmt-aqi", "type": "telemetry", "metric": "env.aqi", "value": 180,
                      "area": "00007"}, at=1)
