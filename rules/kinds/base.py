"""The interface every rule kind implements, and what kinds may ask of the engine (`Context`).

A kind is small: it keeps per-group data (`Group.data`), and says whether its condition holds when an
event arrives (`observe`) or when time passes (`tick`, at the times `next_due` asks for). The timing
shared by every kind (`for`, `keep_firing_for`) is `ioc.rules.timing`'s; matching is `ioc.rules.index`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from ioc.rules.spec import Comparison, RuleBase
from ioc.rules.timing import Group

from ioc.areas import local_date
from ioc.envelope import AnyEvent

if TYPE_CHECKING:
    from ioc.areas import AreaRegistry

__all__ = ["Context", "Judgement", "Kind", "judge_comparison"]

# (whether the condition holds, the value it was judged on)
Judgement = tuple[bool, float | None]
R = TypeVar("R", bound=RuleBase)


class Context:
    """What the engine offers kinds: the area registry (may be None) and the rule's start time.

    `started_at` is when the engine (or, for a rule added by a reload, the reload) started: absence
    deadlines are never earlier than `started_at + after` (the grace period after a restart)."""

    def __init__(self, areas: AreaRegistry | None, started_at: float) -> None:
        self.areas = areas
        self.started_at = started_at
        self.dropped = 0  # samples or entities a kind refused at its bound (a counter for /metrics)

    def level(self, area: str | None, at: float) -> str | None:
        if area is None or self.areas is None:
            return None
        return self.areas.level_of(area, local_date(at))

    def area_name(self, area: str, at: float) -> str:
        """The registry's (Vietnamese) name of `area`, or the code itself when it is not known."""
        found = self.areas.get(area, local_date(at)) if self.areas is not None else None
        return found.name if found is not None else area

    def target(self, kpi: str | None, level: str | None, at: float) -> float | None:
        if kpi is None or level is None or self.areas is None:
            return None
        return self.areas.target(kpi, level, local_date(at))  # type: ignore[arg-type]


class Kind(Generic[R]):
    """One rule's evaluator. Subclasses set `model` (their pydantic rule) and override what they need."""

    model: ClassVar[type[RuleBase]]

    def __init__(self, rule: R, context: Context) -> None:
        self.rule = rule
        self.context = context

    def new_data(self) -> Any:
        """The per-group data of a new group."""
        return None

    def observe(self, group: Group, event: AnyEvent, time: float, now: float) -> Judgement | None:
        """An event of this group arrived at event time `time` (its `time` as Unix seconds); the engine's
        clock is at `now` (`time`, or later for a late event).
        Return the new judgement, or None when the event changes nothing (e.g. not a type it judges)."""
        raise NotImplementedError

    def tick(self, group: Group, now: float) -> Judgement | None:
        """Time reached `now` with no event: a new judgement if time alone changes it, else None."""
        return None

    def next_due(self, group: Group) -> float | None:
        """When `tick` must run next for this group (window expiry, absence deadline), or None."""
        return None

    def seeds(self) -> Iterable[dict[str, str]]:
        """Label sets of groups to create at start-up although no event has been seen (absence)."""
        return ()

    def dump(self, data: Any) -> Any:
        """`Group.data` as JSON-ready values (state that survives a restart)."""
        return data

    def snapshot(self, data: Any) -> Any:
        """`Group.data` as it is now, taken under the engine's lock: a cheap copy that later changes do not
        reach, which `encode` turns into `dump`'s values after the lock is released (a big state, a
        window's samples, must not hold the evaluation up while it is encoded). Default: `dump` itself."""
        return self.dump(data)

    def encode(self, snapshot: Any) -> Any:
        """`dump`'s values from a `snapshot` (outside the engine's lock)."""
        return snapshot

    def load(self, raw: Any) -> Any:
        return raw


def judge_comparison(rule: Comparison, context: Context, group: Group, value: float | None,
                     metric: str | None, now: float) -> Judgement:
    """Judge `value` against the rule's threshold for this group (a number, by the group's area level,
    or the KPI's `target` for that level), with hysteresis. No threshold for the group: does not hold."""
    if value is None:
        return (False, None)
    threshold: float | None
    clear: float | None
    level = None
    if isinstance(rule.threshold, dict) or rule.threshold == "target" or isinstance(rule.clear, dict):
        level = context.level(group.labels.get("area"), now)
    if isinstance(rule.threshold, dict):
        threshold = rule.threshold.get(level) if level is not None else None  # type: ignore[call-overload]
    elif rule.threshold == "target":
        threshold = context.target(metric, level, now)
    else:
        threshold = float(rule.threshold)
    if isinstance(rule.clear, dict):
        clear = rule.clear.get(level) if level is not None else None  # type: ignore[call-overload]
    else:
        clear = rule.clear
    group.threshold = threshold
    if threshold is None:
        return (False, value)
    return (rule.holds(value, threshold, clear, group.holds), value)
