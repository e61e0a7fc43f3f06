"""The KPI aggregators on fed events and `advance()` calls: no servers, no wall clock."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from ioc.aggregators import Aggregator, DossierTracker, StatusTracker, build_aggregators, rollup
from ioc.aggregators.calendar import WorkCalendar, load_holidays, local_midnight
from ioc.aggregators.dossiers import grade
from ioc.areas import AreaRegistry
from ioc.config import KpisSettings
from ioc.envelope import DossierEvent, StatusEvent
from ioc.errors import ConfigError
from ioc.kpis import Kpi

VN = timezone(timedelta(hours=7))
MONDAY = datetime(2026, 3, 2, 8, 0, tzinfo=VN)  # after the 2025 reform: commune -> province
OLD_MONDAY = datetime(2025, 3, 3, 8, 0, tzinfo=VN)  # before it: commune -> district -> province
AREAS = AreaRegistry.default()
NO_HOLIDAYS = WorkCalendar(frozenset(), 1)


class Board:
    """Collects emitted KPIs and answers the latest value of a series."""

    def __init__(self) -> None:
        self.emitted: list[Kpi] = []

    def __call__(self, kpi: Kpi) -> None:
        self.emitted.append(kpi)

    def value(self, kpi: str, area: str) -> float | None:
        found = [k for k in self.emitted if k.kpi == kpi and k.area == area]
        return found[-1].value if found else None

    def latest(self, kpi: str, area: str) -> Kpi:
        return [k for k in self.emitted if k.kpi == kpi and k.area == area][-1]

    def take(self) -> list[Kpi]:
        taken, self.emitted = self.emitted, []
        return taken


_counter = [0]


def dossier(dossier_id: str, status: str = "received", *, time: datetime = MONDAY, area: str | None = "22945",
            due: datetime | None = None, received: datetime | None = None, finished: datetime | None = None,
            channel: str = "online", level: str = "commune", source: str = "dvc-binhthuan") -> DossierEvent:
    _counter[0] += 1
    fields: dict[str, Any] = {
        "id": f"e{_counter[0]}", "source": source, "type": "dossier", "time": time, "dossier_id": dossier_id,
        "procedure": "1.001612", "status": status, "received_at": received or time,
        "due_at": due or time + timedelta(days=10), "channel": channel, "level": level,
    }
    if area is not None:
        fields["area"] = area
    if finished is not None:
        fields["finished_at"] = finished
    return DossierEvent.model_validate(fields)


def status(entity: str, state: str, *, time: datetime = MONDAY, area: str = "22945",
           source: str = "viettel-ran") -> StatusEvent:
    _counter[0] += 1
    return StatusEvent.model_validate({"id": f"s{_counter[0]}", "source": source, "type": "status",
                                       "time": time, "area": area, "entity": entity, "state": state})


@pytest.fixture
def board() -> Board:
    return Board()


def tracker(board: Board, store: str | Path = ":memory:", calendar: WorkCalendar = NO_HOLIDAYS,
            **options: Any) -> DossierTracker:
    return DossierTracker(AREAS, calendar, store, board, **options)


def test_overdue_flips_with_the_clock_alone(board: Board) -> None:
    dossiers = tracker(board)
    due = MONDAY + timedelta(days=3, hours=9)  # Thursday 17:00
    dossiers.observe(dossier("d1", due=due))
    assert board.value("kpi.dossier.overdue_open", "22945") == 0
    board.take()
    dossiers.advance(due.timestamp() - 1)
    assert board.value("kpi.dossier.overdue_open", "22945") is None  # unchanged: nothing emitted
    dossiers.advance(due.timestamp())  # due_at <= now: overdue
    assert board.value("kpi.dossier.overdue_open", "22945") == 1
    assert board.value("kpi.dossier.overdue_open", "68") == 1
    assert board.latest("kpi.dossier.overdue_open", "22945").updated_at == due.timestamp()
    assert board.value("kpi.dossier.open", "22945") is None  # still 1 open: not re-emitted


def test_a_dossier_already_past_due_is_overdue_at_once(board: Board) -> None:
    dossiers = tracker(board)
    dossiers.advance(MONDAY.timestamp())
    dossiers.observe(dossier("late", time=MONDAY, due=MONDAY - timedelta(hours=1)))
    assert board.value("kpi.dossier.overdue_open", "22945") == 1


def test_supplement_is_never_overdue(board: Board) -> None:
    dossiers = tracker(board)
    due = MONDAY + timedelta(days=1)
    dossiers.observe(dossier("d1", due=due))
    dossiers.observe(dossier("d1", "supplement", time=MONDAY + timedelta(hours=1), due=due))
    dossiers.advance((due + timedelta(days=5)).timestamp())
    assert board.value("kpi.dossier.overdue_open", "22945") == 0
    assert board.value("kpi.dossier.near_due_open", "22945") == 0
    assert board.value("kpi.dossier.open", "22945") == 1
    # back from the citizen, past due: overdue at once
    dossiers.observe(dossier("d1", "processing", time=due + timedelta(days=6), due=due))
    assert board.value("kpi.dossier.overdue_open", "22945") == 1


def test_near_due_counts_working_days_over_a_weekend_and_a_holiday(tmp_path: Path, board: Board) -> None:
    holidays = tmp_path / "holidays.txt"
    holidays.write_text("# test\n2026-04-30  # Thursday\n2026-05-01\n")
    calendar = WorkCalendar(load_holidays(holidays), 1)
    due = datetime(2026, 5, 4, 17, 0, tzinfo=VN)  # Monday after a long weekend
    # 1 working day: Thu 30/04 and Fri 01/05 are holidays, Sat and Sun are not working days, so the
    # dossier is near-due from Wednesday 29/04 00:00 (one working day, Monday, remains after it).
    assert calendar.near_start(due.timestamp()) == local_midnight(date(2026, 4, 29))
    assert WorkCalendar(frozenset(), 1).near_start(due.timestamp()) == local_midnight(date(2026, 5, 1))
    assert WorkCalendar(frozenset(), 0).near_start(due.timestamp()) == local_midnight(date(2026, 5, 4))
    dossiers = tracker(board, calendar=calendar)
    dossiers.observe(dossier("d1", time=datetime(2026, 4, 27, 9, 0, tzinfo=VN), due=due))
    assert board.value("kpi.dossier.near_due_open", "22945") == 0
    dossiers.advance(local_midnight(date(2026, 4, 29)) - 1)
    assert board.value("kpi.dossier.near_due_open", "22945") == 0
    dossiers.advance(local_midnight(date(2026, 4, 29)))
    assert board.value("kpi.dossier.near_due_open", "22945") == 1
    assert board.value("kpi.dossier.near_due_open", "68") == 1
    dossiers.advance(due.timestamp())
    assert board.value("kpi.dossier.near_due_open", "22945") == 0
    assert board.value("kpi.dossier.overdue_open", "22945") == 1


def test_holidays_file_errors_name_the_line(tmp_path: Path) -> None:
    holidays = tmp_path / "holidays.txt"
    holidays.write_text("2026-01-01\n# ok\n2026-13-01\n")
    with pytest.raises(ConfigError) as caught:
        build_aggregators(AREAS, KpisSettings(holidays_file=str(holidays)), ":memory:", Board())
    assert caught.value.problems == [f"{holidays}:3: '2026-13-01' is not a date (YYYY-MM-DD)"]


def test_the_shipped_holidays_load() -> None:
    aggregators = build_aggregators(AREAS, KpisSettings(), ":memory:", Board())
    assert {type(a) for a in aggregators} == {DossierTracker, StatusTracker}
    calendar = WorkCalendar(load_holidays(Path(__file__).parents[2] / "ioc/data/holidays-vn.txt"), 1)
    assert not calendar.is_working(date(2026, 2, 17)) and calendar.is_working(date(2026, 2, 23))
    for aggregator in aggregators:
        aggregator.close()


def test_grading() -> None:
    due = datetime(2026, 3, 5, 17, 0, tzinfo=VN)

    def us(moment: datetime) -> int:
        return int(moment.timestamp() * 1_000_000)

    assert grade(us(datetime(2026, 3, 4, 23, 59, tzinfo=VN)), us(due)) == "early"
    assert grade(us(datetime(2026, 3, 5, 0, 0, tzinfo=VN)), us(due)) == "on_time"
    assert grade(us(due), us(due)) == "on_time"
    assert grade(us(due) + 1, us(due)) == "late"


def test_on_time_rate_and_online_share_with_targets_by_level(board: Board) -> None:
    dossiers = tracker(board)
    due = MONDAY + timedelta(days=3)
    dossiers.observe(dossier("early", due=due, channel="online"))
    dossiers.observe(dossier("ontime", due=due, channel="online"))
    dossiers.observe(dossier("late", due=due, channel="counter"))
    dossiers.observe(dossier("post", due=due, channel="post", area="22918"))
    assert board.latest("kpi.dossier.online_share", "22945").value == pytest.approx(200 / 3)
    assert board.latest("kpi.dossier.online_share", "22945").target == 60  # commune
    assert board.latest("kpi.dossier.online_share", "68").value == 50
    assert board.latest("kpi.dossier.online_share", "68").target == 90  # province
    later = MONDAY + timedelta(days=1)
    dossiers.observe(dossier("early", "done", time=later, due=due, finished=later))
    dossiers.observe(dossier("ontime", "done", time=due, due=due, finished=due))
    # no finished_at: the event's time is when it finished
    dossiers.observe(dossier("late", "denied", time=due + timedelta(hours=1), due=due))
    rate = board.latest("kpi.dossier.on_time_rate", "22945")
    assert rate.value == pytest.approx(200 / 3) and rate.target == 95 and rate.level == "commune"
    assert board.value("kpi.dossier.on_time_rate", "22918") is None  # nothing finished there yet
    assert board.value("kpi.dossier.on_time_rate", "68") == pytest.approx(200 / 3)
    assert board.value("kpi.dossier.open", "22945") == 0 and board.value("kpi.dossier.open", "68") == 1


def test_on_time_statuses_choose_the_denominator(board: Board) -> None:
    dossiers = tracker(board, on_time_statuses=frozenset({"done"}))
    due = MONDAY + timedelta(days=3)
    dossiers.observe(dossier("a", "done", due=due, finished=MONDAY))
    dossiers.observe(dossier("b", "denied", due=due, finished=due + timedelta(days=1)))
    assert board.value("kpi.dossier.on_time_rate", "22945") == 100


def test_roll_up_through_the_district_before_the_reform(board: Board) -> None:
    dossiers = tracker(board)
    dossiers.observe(dossier("d1", time=OLD_MONDAY, area="22945"))
    dossiers.observe(dossier("d2", time=OLD_MONDAY, area="22918", channel="counter"))
    dossiers.observe(dossier("d3", time=OLD_MONDAY, area="23231"))  # La Gi
    assert board.value("kpi.dossier.open", "593") == 2
    assert board.value("kpi.dossier.open", "594") == 1
    assert board.value("kpi.dossier.open", "60") == 3  # Bình Thuận, a province until 2025-06-30
    share = board.latest("kpi.dossier.online_share", "593")
    assert share.value == 50 and share.level == "district" and share.target == 80
    assert board.latest("kpi.dossier.open", "60").level == "province"


def test_unknown_area_is_tracked_alone_and_counted(board: Board) -> None:
    dossiers = tracker(board)
    dossiers.observe(dossier("d1", area="99999", level="district"))
    kpi = board.latest("kpi.dossier.open", "99999")
    assert kpi.value == 1 and kpi.level == "district"
    assert board.value("kpi.dossier.open", "68") is None
    families = {family.name: family for family in dossiers.metrics()()}
    assert families["ioc_aggregator_dossier_unknown_area_events"].samples[0].value == 1
    dossiers.observe(dossier("d2", area=None))
    events = {s.labels["outcome"]: s.value for s in families["ioc_aggregator_dossier_events"].samples}
    assert events["applied"] == 1
    events = {s.labels["outcome"]: s.value
              for s in {f.name: f for f in dossiers.metrics()()}["ioc_aggregator_dossier_events"].samples}
    assert events["no_area"] == 1


def test_made_up_area_codes_past_the_bound_share_one_node(board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    """A vendor sending ever new codes cannot grow the trackers' nodes and series without bound: past
    `MAX_UNKNOWN_AREAS` distinct unknown codes, a new one counts on the one node `unknown` (and says so)."""
    monkeypatch.setattr(rollup, "MAX_UNKNOWN_AREAS", 3)
    dossiers = tracker(board)
    for number in range(6):
        dossiers.observe(dossier(f"d{number}", area=f"9900{number}", level="commune"))
    dossiers.observe(dossier("d9", area="99001", level="commune"))  # a code already with its node
    assert [board.value("kpi.dossier.open", f"9900{number}") for number in range(6)] == [1, 2, 1, None, None, None]
    assert board.value("kpi.dossier.open", rollup.UNKNOWN_AREA) == 3
    unknown = [code for code in dossiers._nodes.codes if code.startswith("990") or code == rollup.UNKNOWN_AREA]
    assert len(unknown) == 4
    families = {family.name: family for family in dossiers.metrics()()}
    assert families["ioc_aggregator_dossier_unknown_areas_folded"].samples[0].value == 3
    assert families["ioc_aggregator_dossier_unknown_area_events"].samples[0].value == 7


def test_duplicates_and_out_of_order_events_do_not_double_count(board: Board) -> None:
    dossiers = tracker(board)
    received = dossier("d1", time=MONDAY)
    dossiers.observe(received)
    dossiers.observe(received)  # the same event again
    dossiers.observe(dossier("d1", "processing", time=MONDAY + timedelta(hours=2)))
    dossiers.observe(dossier("d1", "received", time=MONDAY + timedelta(hours=1)))  # older: ignored
    assert board.value("kpi.dossier.open", "22945") == 1 and board.value("kpi.dossier.open", "68") == 1
    finished = MONDAY + timedelta(hours=3)
    done = dossier("d1", "done", time=finished, finished=finished)
    dossiers.observe(done)
    dossiers.observe(done)
    dossiers.observe(dossier("d1", "done", time=finished + timedelta(hours=1), finished=finished))
    dossiers.observe(dossier("d1", "processing", time=MONDAY + timedelta(hours=2, minutes=30)))  # older
    assert board.value("kpi.dossier.open", "22945") == 0
    assert board.value("kpi.dossier.online_share", "22945") == 100
    counts = dossiers._counts.periods[dossiers._counts.current]
    node = dossiers._nodes.codes.index("68")
    assert (counts.received[node], counts.finished[node], counts.on_time[node]) == (1, 1, 1)
    samples = {s.labels["outcome"]: s.value for f in dossiers.metrics()()
               if f.name == "ioc_aggregator_dossier_events" for s in f.samples}
    assert samples["out_of_order"] == 2


def test_a_later_received_updates_the_dossier(board: Board) -> None:
    dossiers = tracker(board)
    dossiers.observe(dossier("d1", due=MONDAY + timedelta(hours=2), area="22945"))
    moved = MONDAY + timedelta(hours=1)
    dossiers.observe(dossier("d1", time=moved, due=MONDAY + timedelta(days=5), area="22918",
                             channel="counter"))
    assert board.value("kpi.dossier.open", "22945") == 0 and board.value("kpi.dossier.open", "22918") == 1
    assert board.value("kpi.dossier.online_share", "68") == 0
    dossiers.advance((MONDAY + timedelta(hours=3)).timestamp())
    assert board.value("kpi.dossier.overdue_open", "22918") == 0  # the new due date counts


def test_emits_only_on_change(board: Board) -> None:
    dossiers = tracker(board)
    dossiers.observe(dossier("d1"))
    first = board.take()
    assert {k.kpi for k in first if k.area == "22945"} == {
        "kpi.dossier.open", "kpi.dossier.overdue_open", "kpi.dossier.near_due_open",
        "kpi.dossier.online_share"}
    dossiers.observe(dossier("d1", "processing", time=MONDAY + timedelta(minutes=5)))
    dossiers.advance((MONDAY + timedelta(minutes=6)).timestamp())
    assert board.take() == []
    dossiers.observe(dossier("d2", time=MONDAY + timedelta(minutes=7)))
    changed = board.take()
    assert {(k.kpi, k.area, k.value) for k in changed} == {("kpi.dossier.open", "22945", 2.0),
                                                           ("kpi.dossier.open", "68", 2.0)}
    assert all(k.updated_at == (MONDAY + timedelta(minutes=7)).timestamp() for k in changed)


def test_a_new_month_starts_new_rates(board: Board) -> None:
    dossiers = tracker(board)
    dossiers.observe(dossier("d1", channel="counter"))
    assert board.value("kpi.dossier.online_share", "22945") == 0
    april = datetime(2026, 4, 1, 9, 0, tzinfo=VN)
    dossiers.observe(dossier("d2", time=april, channel="online"))
    assert board.value("kpi.dossier.online_share", "22945") == 100  # April's only dossier
    assert board.value("kpi.dossier.open", "22945") == 2


def test_restart_from_the_store_keeps_the_counts(store_url: str, board: Board) -> None:
    store = store_url
    dossiers = tracker(board, store)
    due = MONDAY + timedelta(days=1)
    dossiers.observe(dossier("open1", due=due))
    dossiers.observe(dossier("open2", due=MONDAY + timedelta(days=20), area="22918", channel="counter"))
    dossiers.observe(dossier("done1", "done", due=due, finished=MONDAY + timedelta(hours=1)))
    dossiers.close()

    again = Board()
    restarted = tracker(again, store)
    restarted.advance((due + timedelta(minutes=1)).timestamp())  # first sight, and d1 now overdue
    assert again.value("kpi.dossier.open", "68") == 2
    assert again.value("kpi.dossier.overdue_open", "68") == 1
    assert again.value("kpi.dossier.overdue_open", "22918") == 0
    assert again.value("kpi.dossier.on_time_rate", "22945") == 100
    assert again.value("kpi.dossier.online_share", "68") == pytest.approx(200 / 3)
    # a repeat of the finished dossier's event after the restart still counts once
    restarted.observe(dossier("done1", "done", time=MONDAY + timedelta(hours=2), due=due,
                              finished=MONDAY + timedelta(hours=1)))
    restarted.observe(dossier("open1", time=MONDAY, due=due))  # older than what was applied: ignored
    assert again.value("kpi.dossier.open", "68") == 2
    assert again.value("kpi.dossier.online_share", "68") == pytest.approx(200 / 3)
    restarted.close()


def test_status_coverage_share_and_roll_up(board: Board) -> None:
    coverage = StatusTracker(AREAS, ":memory:", board)
    coverage.observe(status("cell-1", "up", area="22945"))
    coverage.observe(status("cell-2", "down", area="22945"))
    coverage.observe(status("cell-3", "degraded", area="22918"))
    coverage.observe(status("cell-4", "up", area="22918"))
    share = board.latest("kpi.coverage.down_share", "22945")
    assert share.value == 50 and share.target == 0 and share.level == "commune"
    assert board.value("kpi.coverage.down", "68") == 1
    assert board.value("kpi.coverage.down_share", "68") == 25
    assert board.value("kpi.coverage.down_share", "22918") == 0
    coverage.observe(status("cell-1", "down", time=MONDAY + timedelta(minutes=1)))
    assert board.value("kpi.coverage.down", "68") == 2
    assert board.value("kpi.coverage.down_share", "22945") == 100
    coverage.observe(status("cell-1", "up", time=MONDAY + timedelta(seconds=30)))  # older: ignored
    coverage.observe(status("cell-1", "down", time=MONDAY + timedelta(minutes=1)))  # repeat
    assert board.value("kpi.coverage.down", "68") == 2 and board.value("kpi.coverage.down_share", "68") == 50


def test_status_roll_up_before_the_reform_and_unknown_area(board: Board) -> None:
    coverage = StatusTracker(AREAS, ":memory:", board)
    coverage.observe(status("cell-1", "down", time=OLD_MONDAY, area="22945"))
    coverage.observe(status("cell-9", "down", time=OLD_MONDAY, area="888"))
    assert board.value("kpi.coverage.down", "593") == 1 and board.value("kpi.coverage.down", "60") == 1
    assert board.latest("kpi.coverage.down", "888").level == "district"


def test_status_restart_keeps_the_latest_states(store_url: str, board: Board) -> None:
    store = store_url
    coverage = StatusTracker(AREAS, store, board)
    coverage.observe(status("cell-1", "down"))
    coverage.observe(status("cell-2", "up"))
    coverage.close()
    again = Board()
    restarted = StatusTracker(AREAS, store, again)
    restarted.advance(MONDAY.timestamp() + 60)
    assert again.value("kpi.coverage.down_share", "68") == 50
    restarted.observe(status("cell-1", "up", time=MONDAY - timedelta(minutes=1)))  # older: ignored
    restarted.observe(status("cell-2", "down", time=MONDAY + timedelta(minutes=1)))
    assert again.value("kpi.coverage.down_share", "68") == 100
    restarted.close()


def test_aggregators_share_one_store_and_ignore_other_types(store_url: str, board: Board) -> None:
    aggregators: list[Aggregator] = build_aggregators(AREAS, KpisSettings(), store_url, board)
    for aggregator in aggregators:
        aggregator.observe(status("cell-1", "down"))
        aggregator.observe(dossier("d1"))
        aggregator.advance(MONDAY.timestamp() + 1)
    assert board.value("kpi.coverage.down", "68") == 1 and board.value("kpi.dossier.open", "68") == 1
    assert len([k for k in board.emitted if k.kpi == "kpi.dossier.open" and k.area == "68"]) == 1
    for aggregator in aggregators:
        aggregator.close()
