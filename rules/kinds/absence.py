"""`absence`: no matching event for `after`; resolves when an event arrives.

The deadline of a group is `max(last_seen, started_at) + after`, where `started_at` is when the engine
started (or the reload that added the rule): after a restart nothing fires before `after` has passed
(the grace period), and a series never seen since start-up is absent once `after` has passed since
start-up. A never-seen series is known when every `group_by` label is fixed by `match` (e.g.
`match: {source: [a, b]}`, `group_by: [source]` knows the series `a` and `b`), or from restored state.
An absence alert carries no value.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Annotated, Literal

from ioc.rules.kinds.base import Judgement, Kind
from ioc.rules.spec import RuleBase
from ioc.rules.timing import Group
from pydantic import Field

from ioc.config import Duration
from ioc.envelope import AnyEvent

MAX_SEEDS = 10_000  # never-seen series watched from start-up, per rule (the product of the match lists)


class AbsenceRule(RuleBase):
    kind: Literal["absence"]
    after: Annotated[Duration, Field(gt=0)]


class AbsenceKind(Kind[AbsenceRule]):
    model = AbsenceRule

    def new_data(self) -> float | None:
        return None  # when the group's latest event happened

    def observe(self, group: Group, event: AnyEvent, time: float, now: float) -> Judgement | None:
        group.data = time if group.data is None else max(group.data, time)
        if group.holds and now >= self._deadline(group):
            return None  # a late event: the series has still been silent for `after`
        return (False, None)

    def tick(self, group: Group, now: float) -> Judgement | None:
        if group.holds or now < self._deadline(group):
            return None
        return (True, None)

    def next_due(self, group: Group) -> float | None:
        return None if group.holds else self._deadline(group)

    def _deadline(self, group: Group) -> float:
        last_seen = group.data if group.data is not None else self.context.started_at
        return max(last_seen, self.context.started_at) + self.rule.after

    def seeds(self) -> Iterable[dict[str, str]]:
        fixed = [self.rule.match.fixes_label(label) for label in self.rule.group_by]
        if any(values is None for values in fixed):
            return []
        combinations = itertools.product(*(sorted(values or ()) for values in fixed))
        return [dict(zip(self.rule.group_by, combination, strict=True))
                for combination in itertools.islice(combinations, MAX_SEEDS)]
