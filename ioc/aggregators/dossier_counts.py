"""The dossier tracker's counters per area node, counted along each dossier's roll-up chain (`rollup`).

Now: open, overdue and near-due dossiers. Per period (a calendar month, `calendar.period_of`): dossiers
received (of them online) and finished with a graded status (of them on time); only the current and the
previous period are kept. The counters remember which chains changed since the last emission, so only
those nodes' KPIs are offered again (`dossier_kpis`).
"""

from __future__ import annotations

from ioc.aggregators.rollup import AreaNodes
from ioc.areas import AreaRegistry

# The phase of an open dossier relative to the clock.
NORMAL, NEAR, OVERDUE, UNTIMED = 0, 1, 2, 3  # UNTIMED: in supplement (never near-due nor overdue)


class PeriodCounts:
    """Counters of one period per node: received, received online, finished (graded), on time."""

    __slots__ = ("finished", "on_time", "online", "received")

    def __init__(self, nodes: int) -> None:
        self.received = [0] * nodes
        self.online = [0] * nodes
        self.finished = [0] * nodes
        self.on_time = [0] * nodes

    def grow(self) -> None:
        for values in (self.received, self.online, self.finished, self.on_time):
            values.append(0)


class DossierCounts:
    """Counters per node (lists indexed by node number); every change marks its chain dirty.

    A `sign` of 1 counts a dossier's state, -1 uncounts it (before its next state is counted)."""

    def __init__(self, areas: AreaRegistry) -> None:
        self.open: list[int] = []
        self.overdue: list[int] = []
        self.near: list[int] = []
        self.periods: dict[int, PeriodCounts] = {}
        self.current = 0  # the period of the clock (0: no clock yet)
        self.dirty: set[int] = set()  # chains whose nodes may have changed since the last emission
        self.all_dirty = True  # everything is new to the listener at start
        self.nodes = AreaNodes(areas, self._grow)

    def _grow(self) -> None:
        self.open.append(0)
        self.overdue.append(0)
        self.near.append(0)
        for counts in self.periods.values():
            counts.grow()

    def _period(self, period: int) -> PeriodCounts | None:
        if period < self.current - 1:
            return None  # older than the previous period: not kept
        counts = self.periods.get(period)
        if counts is None:
            counts = self.periods[period] = PeriodCounts(len(self.nodes.codes))
        return counts

    def received(self, chain: int, period: int, online: bool, sign: int) -> None:
        counts = self._period(period)
        if counts is not None:
            for node in self.nodes.chains[chain]:
                counts.received[node] += sign
                if online:
                    counts.online[node] += sign
        self.dirty.add(chain)

    def finished(self, chain: int, period: int, on_time: bool, sign: int) -> None:
        counts = self._period(period)
        if counts is not None:
            for node in self.nodes.chains[chain]:
                counts.finished[node] += sign
                if on_time:
                    counts.on_time[node] += sign
        self.dirty.add(chain)

    def opened(self, chain: int, phase: int, sign: int) -> None:
        for node in self.nodes.chains[chain]:
            self.open[node] += sign
            if phase == OVERDUE:
                self.overdue[node] += sign
            elif phase == NEAR:
                self.near[node] += sign
        self.dirty.add(chain)

    def start_period(self, period: int) -> None:
        """The clock entered `period`: periods before the previous one are dropped; all is emitted again."""
        self.current = period
        for old in [p for p in self.periods if p < period - 1]:
            del self.periods[old]
        self.all_dirty = True

    def take_changed(self) -> set[int] | range:
        """The nodes changed since the last call (all of them the first time and after `start_period`)."""
        if self.all_dirty:
            self.all_dirty = False
            self.dirty.clear()
            return range(len(self.nodes.codes))
        chains = self.nodes.chains
        nodes = {node for chain in self.dirty for node in chains[chain]}
        self.dirty.clear()
        return nodes

    def reset_changes(self) -> None:
        """Everything is to be emitted at the next `take_changed` (after a reload)."""
        self.dirty.clear()
        self.all_dirty = True
