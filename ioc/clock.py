"""The daemon's clock for timers judged on event time (docs/rules.md: `for`, windows, absence, due dates).

Rules and dossier timers run on event time, yet must also fire when no event arrives at all. The
`EventClock` reconciles both: it is the latest event time seen, carried forward by the wall time that
has passed since that event arrived. With live sources this is the wall clock; with a replay that
plays a past day quickly it follows the replay, so timers fire where the events put them, not where the
wall clock is. Before any event it is unknown (`None`) for `hold` seconds after start — so a replay
started with the daemon is judged on its own time, not on a wall clock already ahead of it — and the
wall clock after that (a series never seen since start-up still becomes absent; `hold` must stay below
the shortest `after` of the absence rules to keep that exact). Vendors' clocks can run ahead by at most `[intake] max_future`, which bounds how far one
source can move it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

WallClock = Callable[[], float]


DEFAULT_HOLD = 60.0


class EventClock:
    def __init__(self, wall: WallClock = time.time, *, hold: float = DEFAULT_HOLD) -> None:
        self._wall = wall
        self._started = wall()
        self._hold = hold
        self._latest: float | None = None
        self._seen_at = 0.0
        self._lock = threading.Lock()

    def observe(self, event_time: float) -> None:
        """An event of `event_time` (Unix seconds) arrived now."""
        with self._lock:
            if self._latest is None or event_time > self._latest:
                self._latest = event_time
                self._seen_at = self._wall()

    def now(self) -> float | None:
        """The time timers are judged at (Unix seconds), or None while it is not known yet."""
        with self._lock:
            wall = self._wall()
            if self._latest is None:
                return wall if wall - self._started >= self._hold else None
            return self._latest + (wall - self._seen_at)
