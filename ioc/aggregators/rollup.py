"""What both trackers share: area nodes with their roll-up chains, and KPIs emitted only on change.

A tracker counts per *node* (an area code) in plain lists indexed by node number. A dossier or an entity
is counted along a *chain*: its own area then each ancestor in the registry on the date of its latest
event (a commune's dossier counts in its district before 2025-07-01 and in its province). The chain is
kept with the item, so it is uncounted along the same nodes it was counted on even if the registry's
structure changed in between; its next event moves it to the chain of that event's date. An area the
registry does not know is a chain of itself alone (no roll-up) with the level the event gave; past
`MAX_UNKNOWN_AREAS` distinct unknown codes, a new one is counted on the one node `unknown`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date

import structlog

from ioc.areas import AreaRegistry, local_date
from ioc.envelope import AreaLevel
from ioc.kpis import Kpi, KpiListener

log = structlog.get_logger("ioc.aggregators")

# Unknown area codes are the vendor's to send, as many as it likes: the log says so at most once a minute
# with a count (the first at once), and the trackers count the events per source in /metrics.
UNKNOWN_AREA_LOG_EVERY = 60.0  # seconds
_UNKNOWN_REMEMBERED = 10_000  # distinct unknown codes remembered to tell a new one from a repeat
# Each unknown code is a node with its own KPI series, which the trackers keep for the daemon's life: a
# vendor sending a million made-up codes would grow memory without bound. Past this many, a new unknown
# code is counted on one shared node, `UNKNOWN_AREA`, instead of a node of its own.
MAX_UNKNOWN_AREAS = 10_000
UNKNOWN_AREA = "unknown"


class AreaNodes:
    """Node numbers for area codes, interned chains of nodes, and each node's level."""

    def __init__(self, areas: AreaRegistry, on_new_node: Callable[[], None], *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.areas = areas
        self.codes: list[str] = []
        self.fallback_levels: list[AreaLevel] = []  # the level when the registry has none at a date
        self.chains: list[tuple[int, ...]] = []
        self.chain_known: list[bool] = []
        self._node: dict[str, int] = {}
        self._chain_id: dict[tuple[int, ...], int] = {}
        self._resolved: dict[tuple[str, int, str], int] = {}  # (code, date ordinal, level) -> chain id
        self._on_new_node = on_new_node
        self.unknown_codes: set[str] = set()
        self._monotonic = monotonic
        self._unknown_logged_at = -UNKNOWN_AREA_LOG_EVERY
        self._unknown_unlogged = 0  # new unknown codes since the last line
        self._unknown_example: tuple[str, str] = ("", "")  # (code, level) of the latest
        self.unknown_nodes = 0  # nodes made for unknown codes (bounded by MAX_UNKNOWN_AREAS)
        self.folded = 0  # events of an unknown code counted on UNKNOWN_AREA, past the bound

    def node(self, code: str, level: AreaLevel) -> int:
        index = self._node.get(code)
        if index is None:
            index = len(self.codes)
            self._node[code] = index
            self.codes.append(code)
            self.fallback_levels.append(level)
            self._on_new_node()
        return index

    def _intern(self, nodes: tuple[int, ...], known: bool) -> int:
        chain = self._chain_id.get(nodes)
        if chain is None:
            chain = len(self.chains)
            self._chain_id[nodes] = chain
            self.chains.append(nodes)
            self.chain_known.append(known)
        return chain

    def chain_for(self, code: str, level: AreaLevel, at: float) -> int:
        """The chain of `code` on the date of `at` (Unix s); `level` is used when the area is unknown."""
        day = local_date(at)
        key = (code, day.toordinal(), level)
        chain = self._resolved.get(key)
        if chain is None:
            area = self.areas.get(code, day)
            if area is None:
                if code not in self.unknown_codes:
                    if len(self.unknown_codes) < _UNKNOWN_REMEMBERED:
                        self.unknown_codes.add(code)
                    self._unknown_unlogged += 1
                    self._unknown_example = (code, level)
                    self.log_unknown_areas()
                if code not in self._node:
                    if self.unknown_nodes >= MAX_UNKNOWN_AREAS:
                        self.folded += 1
                        # Not cached: the next event of this code is folded (and counted) again.
                        return self._intern((self.node(UNKNOWN_AREA, level),), known=False)
                    self.unknown_nodes += 1
                chain = self._intern((self.node(code, level),), known=False)
            else:
                nodes = [self.node(area.code, area.level)]
                nodes += [self.node(above.code, above.level) for above in self.areas.ancestors(code, day)]
                chain = self._intern(tuple(nodes), known=True)
            if len(self._resolved) > 1_000_000:
                self._resolved.clear()
            self._resolved[key] = chain
        return chain

    def log_unknown_areas(self) -> None:
        """Log the unknown codes seen since the last line, if any, at most once per
        `UNKNOWN_AREA_LOG_EVERY` seconds (the trackers call it on every `advance` too, so the last ones
        of a burst are told within a minute)."""
        if not self._unknown_unlogged:
            return
        now = self._monotonic()
        if now - self._unknown_logged_at < UNKNOWN_AREA_LOG_EVERY:
            return
        code, level = self._unknown_example
        log.warning("aggregator.unknown_area", codes=self._unknown_unlogged, example=code, level=level,
                    effect="counted alone, no roll-up", every_s=UNKNOWN_AREA_LOG_EVERY,
                    folded=self.folded, max_unknown_areas=MAX_UNKNOWN_AREAS)
        self._unknown_logged_at = now
        self._unknown_unlogged = 0

    def chain_text(self, chain: int) -> str:
        """The chain as stored in SQLite: its codes, comma-separated, own area first."""
        return ",".join(self.codes[node] for node in self.chains[chain])

    def chain_from_text(self, text: str, level: AreaLevel, at: float) -> int:
        """A stored chain back (at restart); levels of unseen nodes from the registry at `at`."""
        codes = text.split(",")
        day = local_date(at)
        nodes = []
        for position, code in enumerate(codes):
            area = self.areas.get(code, day)
            nodes.append(self.node(code, area.level if area else level if position == 0 else "province"))
        known = len(codes) > 1 or self.areas.get(codes[0], day) is not None
        return self._intern(tuple(nodes), known)

    def level(self, node: int, day: date) -> AreaLevel:
        """The node's level in the registry on `day`, else the level it was first seen with."""
        return self.areas.level_of(self.codes[node], day) or self.fallback_levels[node]


class KpiChanges:
    """Offers KPI values; keeps those that differ from what was last emitted for the series."""

    def __init__(self, areas: AreaRegistry, on_kpi: KpiListener) -> None:
        self.areas = areas
        self.on_kpi = on_kpi
        self._last: dict[tuple[str, str], tuple[float, float | None, str]] = {}

    def offer(self, out: list[Kpi], kpi: str, area: str, level: AreaLevel, value: float, day: date,
              at: float) -> None:
        target = self.areas.target(kpi, level, day)
        state = (value, target, level)
        key = (kpi, area)
        if self._last.get(key) != state:
            self._last[key] = state
            out.append(Kpi(kpi=kpi, area=area, level=level, value=value, target=target, updated_at=at))

    def send(self, kpis: list[Kpi]) -> None:
        """Hand KPIs to the listener (outside the tracker's lock); a failing listener is logged."""
        for kpi in kpis:
            try:
                self.on_kpi(kpi)
            except Exception:
                log.exception("aggregator.listener_failed", kpi=kpi.kpi, area=kpi.area)
