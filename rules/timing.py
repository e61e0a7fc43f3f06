"""The life of one alert (a rule and one group of labels): inactive -> pending -> firing -> resolved.

Kinds only say whether their condition holds and on what value; this module owns the timing every kind
shares (docs/rules.md): `for` (pending until the condition has held that long) and `keep_firing_for`
(after the condition stops, a firing alert stays firing that long; a pending one resolves at once).
All times are event time in Unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

__all__ = ["Change", "Group", "Phase", "due", "judge", "tick"]

Phase: TypeAlias = Literal["inactive", "pending", "firing"]
# A state change to report: (new state, the time it happened).
Change: TypeAlias = tuple[Literal["pending", "firing", "resolved"], float]


@dataclass(slots=True, eq=False)
class Group:
    """The state of one rule for one label set. `data` belongs to the rule's kind."""

    key: tuple[str | None, ...]
    labels: dict[str, str]
    phase: Phase = "inactive"
    holds: bool = False  # the condition as last judged (the hysteresis latch of comparisons)
    since: float | None = None  # when the current episode began (pending, or firing when `for` is 0)
    fired_at: float | None = None
    cleared_at: float | None = None  # firing, but the condition stopped at this time (keep_firing_for)
    value: float | None = None  # the value last judged
    threshold: float | None = None  # the threshold it was judged against, when the kind has one
    data: Any = None
    timer: float | None = field(default=None)  # the earliest time a timer is queued for this group

    @property
    def active(self) -> bool:
        return self.phase != "inactive"

    def _reset(self) -> None:
        self.phase, self.since, self.fired_at, self.cleared_at = "inactive", None, None, None


def judge(group: Group, holds: bool, value: float | None, now: float, for_: float,
          keep_firing_for: float) -> list[Change]:
    """Apply a new judgement of the condition at `now`; the state changes it causes, in order."""
    group.holds = holds
    if value is not None:  # an emptied window has no value: keep the last one for the summary
        group.value = value
    changes: list[Change] = []
    if holds:
        if group.phase == "inactive":
            group.since = now
            if for_ <= 0:
                group.phase, group.fired_at = "firing", now
                changes.append(("firing", now))
            else:
                group.phase = "pending"
                changes.append(("pending", now))
        elif group.phase == "firing":
            group.cleared_at = None
    elif group.phase == "pending":
        group._reset()
        changes.append(("resolved", now))
    elif group.phase == "firing" and group.cleared_at is None:
        if keep_firing_for <= 0:
            group._reset()
            changes.append(("resolved", now))
        else:
            group.cleared_at = now
    changes += tick(group, now, for_, keep_firing_for)
    return changes


def tick(group: Group, now: float, for_: float, keep_firing_for: float) -> list[Change]:
    """Time reached `now` with no new judgement: pending long enough fires; keep_firing_for runs out.
    A change is reported at the moment it became due, which may be before `now`."""
    changes: list[Change] = []
    if group.phase == "pending" and group.since is not None and now >= group.since + for_:
        group.phase, group.fired_at = "firing", group.since + for_
        changes.append(("firing", group.fired_at))
    if group.phase == "firing" and group.cleared_at is not None and now >= group.cleared_at + keep_firing_for:
        at = group.cleared_at + keep_firing_for
        group._reset()
        changes.append(("resolved", at))
    return changes


def due(group: Group, for_: float, keep_firing_for: float) -> float | None:
    """When `tick` next has something to do for this group, or None."""
    if group.phase == "pending" and group.since is not None:
        return group.since + for_
    if group.phase == "firing" and group.cleared_at is not None:
        return group.cleared_at + keep_firing_for
    return None
