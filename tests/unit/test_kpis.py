"""The KPI board: latest values, listeners, and what it keeps across a restart."""

from __future__ import annotations

from ioc.kpis import Kpi, KpiBoard


def test_restore_puts_back_the_latest_values_without_telling_listeners() -> None:
    board = KpiBoard()
    board.publish(Kpi("kpi.dossier.open", "22723", "commune", 3.0, None, 100.0))
    board.publish(Kpi("kpi.dossier.online_share", "60", "province", 85.0, 90.0, 101.0))
    heard: list[Kpi] = []
    again = KpiBoard()
    again.listeners.append(heard.append)
    assert again.restore(board.dump()) == 2
    assert again.latest() == board.latest() and heard == []
    newer = Kpi("kpi.dossier.open", "22723", "commune", 4.0, None, 200.0)
    again.publish(newer)
    assert again.get("kpi.dossier.open", "22723") == newer and heard == [newer]


def test_unreadable_saved_kpis_restore_nothing() -> None:
    board = KpiBoard()
    assert board.restore(b"not json") == 0 and board.restore(b'[["only", "three", 1]]') == 0
    assert board.latest() == []
