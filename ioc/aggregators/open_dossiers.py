"""Open dossiers in memory, compactly, and the clock that moves them from normal to near-due to overdue.

A dict key -> slot and parallel typed arrays per slot (about 45 bytes a dossier besides its key), and a
heap of plain ints `(next transition µs << 32) | slot`. A heap entry of a dossier finished or rescheduled
since is stale: skipped when popped, and dropped when the heap grows past twice the open dossiers.
Every change of phase is counted in `DossierCounts`.
"""

from __future__ import annotations

import heapq
import time
from array import array
from typing import get_args

from ioc.aggregators.calendar import WorkCalendar
from ioc.aggregators.dossier_counts import NEAR, NORMAL, OVERDUE, UNTIMED, DossierCounts
from ioc.envelope import DossierStatus

_SUPPLEMENT = get_args(DossierStatus).index("supplement")  # a status is its index there (`put`)
_SLOT_BITS = 32
_SLOT_MASK = (1 << _SLOT_BITS) - 1
_NO_TIME = -1


def phase_at(status: int, due_us: int, near_us: int, now_us: int) -> int:
    """The phase of an open dossier at `now_us` (`status`: its index in `DossierStatus`)."""
    if status == _SUPPLEMENT:
        return UNTIMED
    if now_us >= due_us:
        return OVERDUE
    if now_us >= near_us:
        return NEAR
    return NORMAL


class OpenDossiers:
    """The open dossiers by key, each counted in `counts` along its chain in its phase."""

    def __init__(self, counts: DossierCounts, calendar: WorkCalendar) -> None:
        self._counts = counts
        self._calendar = calendar
        self.slot_of: dict[str, int] = {}
        self._free: list[int] = []
        self._chain = array("i")
        self._status = bytearray()
        self._online = bytearray()
        self._phase = bytearray()
        self._received_period = array("i")
        self._due = array("q")
        self._near_at = array("q")
        self._last = array("q")
        self._next = array("q")
        self._heap: list[int] = []
        self.last_sweep_seconds = 0.0

    def __len__(self) -> int:
        return len(self.slot_of)

    def last_us(self, slot: int) -> int:
        """The time of the event applied last to the dossier in `slot`."""
        return self._last[slot]

    def uncount(self, slot: int) -> None:
        """Take the dossier's state out of the counters, as `put` counted it (before its next state)."""
        counts, chain = self._counts, self._chain[slot]
        counts.received(chain, self._received_period[slot], bool(self._online[slot]), -1)
        counts.opened(chain, self._phase[slot], -1)

    def put(self, key: str, slot: int | None, chain: int, status: int, online: bool, received_period: int,
            due_us: int, at_us: int, clock_us: int) -> None:
        """Hold the dossier `key` (in its `slot`, or a new one) as open and count it: received in its
        period, open in its phase (`uncount` takes both out)."""
        if slot is None:
            slot = self._new_slot(key)
        self._chain[slot] = chain
        self._status[slot] = status
        self._online[slot] = online
        self._received_period[slot] = received_period
        self._due[slot] = due_us
        near_us = int(self._calendar.near_start(due_us / 1e6) * 1_000_000)
        self._near_at[slot] = near_us
        self._last[slot] = at_us
        phase = phase_at(status, due_us, near_us, clock_us)
        self._phase[slot] = phase
        self._counts.received(chain, received_period, online, 1)
        self._counts.opened(chain, phase, 1)
        self._schedule(slot, phase, due_us, near_us)

    def remove(self, key: str, slot: int) -> None:
        """The dossier is no longer open (uncounted already); its heap entry goes stale."""
        del self.slot_of[key]
        self._next[slot] = _NO_TIME
        self._free.append(slot)

    def _new_slot(self, key: str) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self._status)
            if slot > _SLOT_MASK:
                raise OverflowError("more open dossiers than the tracker can index")
            for values in (self._chain, self._received_period, self._due, self._near_at, self._last,
                           self._next):
                values.append(0)
            for flags in (self._status, self._online, self._phase):
                flags.append(0)
        self.slot_of[key] = slot
        return slot

    def _schedule(self, slot: int, phase: int, due_us: int, near_us: int) -> None:
        at = near_us if phase == NORMAL else due_us if phase == NEAR else _NO_TIME
        if at != self._next[slot]:
            self._next[slot] = at
            if at != _NO_TIME:
                heapq.heappush(self._heap, (at << _SLOT_BITS) | slot)
                if len(self._heap) > 2 * len(self.slot_of) + 4096:
                    self._compact_heap()

    def _compact_heap(self) -> None:
        """Drop the heap's stale entries (of dossiers since finished or rescheduled)."""
        next_at = self._next
        self._heap = [(next_at[slot] << _SLOT_BITS) | slot for slot in self.slot_of.values()
                      if next_at[slot] != _NO_TIME]
        heapq.heapify(self._heap)

    def sweep(self, now_us: int) -> None:
        """Every phase change due by `now_us`, counted (`last_sweep_seconds`: how long it took)."""
        started = time.perf_counter()
        heap, next_at, phases, status, due, near_at = (self._heap, self._next, self._phase, self._status,
                                                      self._due, self._near_at)
        # The counters of a flip are moved here, inline: a method call per flip costs ~5% of the sweep.
        counts = self._counts
        chain_of, chains, dirty, open_near, open_overdue = (self._chain, counts.nodes.chains, counts.dirty,
                                                            counts.near, counts.overdue)
        limit = (now_us << _SLOT_BITS) | _SLOT_MASK
        heappop, heappush = heapq.heappop, heapq.heappush
        while heap and heap[0] <= limit:
            item = heappop(heap)
            slot = item & _SLOT_MASK
            if next_at[slot] != item >> _SLOT_BITS:
                continue  # stale: finished or rescheduled since
            old = phases[slot]
            due_us, near_us = due[slot], near_at[slot]
            new = phase_at(status[slot], due_us, near_us, now_us)
            if new != old:
                chain = chain_of[slot]
                for node in chains[chain]:
                    if old == NEAR:
                        open_near[node] -= 1
                    elif old == OVERDUE:
                        open_overdue[node] -= 1
                    if new == NEAR:
                        open_near[node] += 1
                    elif new == OVERDUE:
                        open_overdue[node] += 1
                phases[slot] = new
                dirty.add(chain)
            at = near_us if new == NORMAL else due_us if new == NEAR else _NO_TIME
            next_at[slot] = at
            if at != _NO_TIME:
                heappush(heap, (at << _SLOT_BITS) | slot)
        self.last_sweep_seconds = time.perf_counter() - started
