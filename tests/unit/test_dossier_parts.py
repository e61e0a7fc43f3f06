"""The dossier tracker's parts on their own: the counters, the open dossiers and their clock, the rows in the
store (a real SQLite file). The tracker as a whole is tested in test_aggregators.py."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from ioc.aggregators.calendar import WorkCalendar, period_of
from ioc.aggregators.dossier_counts import NEAR, NORMAL, OVERDUE, DossierCounts
from ioc.aggregators.dossier_rows import DossierRow, DossierRows, dossier_key
from ioc.aggregators.dossiers import STATUSES
from ioc.aggregators.open_dossiers import OpenDossiers
from ioc.areas import AreaRegistry
from ioc.store import connect

VN = timezone(timedelta(hours=7))
MONDAY = datetime(2026, 3, 2, 8, 0, tzinfo=VN)
US = 1_000_000
T0 = int(MONDAY.timestamp()) * US
AREAS = AreaRegistry.default()
CALENDAR = WorkCalendar(frozenset(), 1)
PROCESSING, SUPPLEMENT = STATUSES.index("processing"), STATUSES.index("supplement")


def commune_chain(counts: DossierCounts, code: str = "22945") -> tuple[int, int, int]:
    """The chain of a commune of province 68, with the commune's node and the province's."""
    chain = counts.nodes.chain_for(code, "commune", T0 / US)
    return chain, counts.nodes.codes.index(code), counts.nodes.codes.index("68")


def test_counts_tell_every_node_first_then_only_the_changed_ones() -> None:
    counts = DossierCounts(AREAS)
    chain, commune, province = commune_chain(counts)
    other, neighbour, _ = commune_chain(counts, "22918")
    assert counts.take_changed() == range(len(counts.nodes.codes))  # all new to the listener
    assert counts.take_changed() == set()
    counts.opened(chain, OVERDUE, 1)
    assert counts.take_changed() == {commune, province}
    assert (counts.open[province], counts.overdue[province], counts.near[province]) == (1, 1, 0)
    counts.opened(chain, OVERDUE, -1)
    counts.opened(chain, NEAR, 1)
    assert (counts.open[commune], counts.overdue[commune], counts.near[commune]) == (1, 0, 1)
    counts.opened(other, NORMAL, 1)
    assert counts.take_changed() == {commune, neighbour, province}
    assert (counts.open[province], counts.near[province], counts.open[neighbour]) == (2, 1, 1)


def test_counts_keep_the_current_and_previous_period_only() -> None:
    counts = DossierCounts(AREAS)
    chain, _, province = commune_chain(counts)
    period = period_of(T0 / US)
    counts.start_period(period)
    counts.received(chain, period - 2, True, 1)  # before the previous period: not kept
    counts.received(chain, period - 1, True, 1)
    counts.received(chain, period, False, 1)
    counts.finished(chain, period, True, 1)
    assert set(counts.periods) == {period - 1, period}
    counts.take_changed()
    counts.start_period(period + 1)
    assert set(counts.periods) == {period}
    kept = counts.periods[period]
    assert (kept.received[province], kept.online[province], kept.finished[province], kept.on_time[province]) \
        == (1, 0, 1, 1)
    assert counts.take_changed() == range(len(counts.nodes.codes))  # a new period: everything again


def test_open_dossiers_flip_with_the_sweep_and_a_removed_one_never_does() -> None:
    counts = DossierCounts(AREAS)
    opened = OpenDossiers(counts, CALENDAR)
    chain, commune, province = commune_chain(counts)
    period = period_of(T0 / US)
    due = T0 + 3 * 86_400 * US  # Thursday 08:00
    near = int(CALENDAR.near_start(due / US) * US)
    assert T0 < near < due
    for key in ("a", "b"):
        opened.put(key, None, chain, PROCESSING, True, period, due, T0, T0)
    opened.put("pause", None, chain, SUPPLEMENT, False, period, due, T0, T0)  # in supplement: never flips
    assert (counts.open[province], counts.near[province], len(opened)) == (3, 0, 3)
    freed = opened.slot_of["b"]
    opened.uncount(freed)
    opened.remove("b", freed)  # finished: its heap entries go stale
    assert counts.open[commune] == 2 and counts.periods[period].received[commune] == 2
    opened.sweep(near - 1)
    assert (counts.near[commune], counts.overdue[commune]) == (0, 0)
    opened.sweep(near)
    assert (counts.near[commune], counts.overdue[commune]) == (1, 0)
    opened.sweep(due)
    assert (counts.near[province], counts.overdue[province], counts.open[province]) == (0, 1, 2)
    opened.put("c", None, chain, PROCESSING, True, period, due, due, due)  # past due: overdue at once
    assert opened.slot_of["c"] == freed  # the finished one's slot, reused
    assert counts.overdue[commune] == 2
    opened.sweep(due + 86_400 * US)
    assert (counts.near[commune], counts.overdue[commune], counts.open[commune]) == (0, 2, 3)


def test_rescheduling_keeps_the_heap_bounded_and_the_latest_due_date() -> None:
    counts = DossierCounts(AREAS)
    opened = OpenDossiers(counts, CALENDAR)
    chain, commune, _ = commune_chain(counts)
    period = period_of(T0 / US)
    opened.put("a", None, chain, PROCESSING, True, period, T0 + 86_400 * US, T0, T0)
    slot = opened.slot_of["a"]
    for step in range(1, 20_000):  # a due date moved again and again: each leaves a stale heap entry
        opened.uncount(slot)
        opened.put("a", slot, chain, PROCESSING, True, period, T0 + (86_400 + step) * US, T0 + step, T0)
    latest_due = T0 + (86_400 + 19_999) * US
    assert len(opened._heap) <= 2 * len(opened) + 4096 + 1  # compacted, not 20 000 entries
    opened.sweep(latest_due - 1)
    assert (counts.open[commune], counts.overdue[commune]) == (1, 0)
    opened.sweep(latest_due)
    assert counts.overdue[commune] == 1


def row(dossier_id: str, status: str, at_us: int, finished_us: int | None = None, received_us: int = T0) -> DossierRow:
    return DossierRow("dvc-lamdong", dossier_id, "22945", "commune", "online", status, received_us,
                      T0 + 10 * 86_400 * US, finished_us, at_us, "22945,68")


def test_rows_find_a_finished_dossier_and_look_up_nothing_for_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "ioc.db"
    rows = DossierRows(path, "dossiers")
    done = row("d1", "done", T0, finished_us=T0)
    rows.put(dossier_key("dvc-lamdong", "d1"), done, T0)
    rows.put(dossier_key("dvc-lamdong", "d2"), row("d2", "received", T0), T0)
    assert rows.find(dossier_key("dvc-lamdong", "d2"), "dvc-lamdong", "d2") is not None  # buffered
    rows.flush(T0)
    queries: list[str] = []
    real = rows.db.execute

    def counted(sql: str, params: Any = ()) -> Any:
        queries.append(sql)
        return real(sql, params)

    rows.db.execute = counted  # type: ignore[method-assign]
    assert rows.find(dossier_key("dvc-lamdong", "d1"), "dvc-lamdong", "d1") == done
    assert len(queries) == 1
    assert rows.find(dossier_key("dvc-lamdong", "new"), "dvc-lamdong", "new") is None
    assert len(queries) == 1  # not in the bitmap of finished keys: no lookup
    rows.close(T0)

    again = DossierRows(path, "dossiers")  # a restart: the bitmap is rebuilt by `load`
    assert again.find(dossier_key("dvc-lamdong", "d1"), "dvc-lamdong", "d1") is None
    assert again.load_clock() == T0
    assert sorted(r.dossier_id for r in again.load()) == ["d1", "d2"]
    assert again.find(dossier_key("dvc-lamdong", "d1"), "dvc-lamdong", "d1") == done
    again.close(T0)


def test_rows_stay_buffered_while_the_store_fails_and_are_written_at_close(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ioc.db"
    rows = DossierRows(path, "dossiers")
    other = connect(path)  # another client of the same file breaks the table under the tracker
    schema = other.execute("SELECT sql FROM sqlite_master WHERE name = 'agg_dossiers'").fetchone()[0]
    other.execute("DROP TABLE agg_dossiers")
    kept = row("d1", "received", T0 + 1)
    rows.put(dossier_key("dvc-lamdong", "d1"), kept, T0 + 1)
    rows.flush(T0 + 1)
    assert "store.write_failed" in capsys.readouterr().out
    assert rows.find(dossier_key("dvc-lamdong", "d1"), "dvc-lamdong", "d1") == kept  # still buffered
    other.execute(schema)
    rows.close(T0 + 1)  # a last attempt, whatever the pause between attempts
    assert "store.write_recovered" in capsys.readouterr().out
    other.close()
    again = DossierRows(path, "dossiers")
    assert again.load_clock() == T0 + 1 and list(again.load()) == [kept]
    again.close(T0 + 1)


def test_rows_prune_the_dossiers_finished_and_received_before_the_cutoff(tmp_path: Path) -> None:
    rows = DossierRows(tmp_path / "ioc.db", "dossiers")
    old = T0 - 70 * 86_400 * US
    rows.put(dossier_key("dvc-lamdong", "old"), row("old", "done", old, finished_us=old, received_us=old), old)
    rows.put(dossier_key("dvc-lamdong", "open"), row("open", "processing", old, received_us=old), old)
    rows.put(dossier_key("dvc-lamdong", "recent"), row("recent", "done", T0, finished_us=T0), T0)
    assert rows.prune(T0 - 30 * 86_400 * US, T0) == 1  # buffered rows are written first
    assert sorted(r.dossier_id for r in rows.load()) == ["open", "recent"]
    rows.close(T0)
