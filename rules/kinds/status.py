"""`status`: the latest `state` of the group is one of `states` (default `[down]`).

Grouped by `entity` (and usually `area`) this is "this cell site is down"; `for` says for how long. The
value judged is 1 for `up` and 0 otherwise (the `up` field of the `status` measurement).
"""

from __future__ import annotations

from typing import Annotated, Literal

from ioc.rules.kinds.base import Context, Judgement, Kind
from ioc.rules.spec import RuleBase
from ioc.rules.timing import Group
from pydantic import Field

from ioc.envelope import AnyEvent, StatusEvent, StatusState


class StatusRule(RuleBase):
    kind: Literal["status"]
    judges = frozenset(("status",))
    states: Annotated[list[StatusState], Field(min_length=1)] = ["down"]  # noqa: RUF012 (pydantic copies it)


class StatusKind(Kind[StatusRule]):
    model = StatusRule

    def __init__(self, rule: StatusRule, context: Context) -> None:
        super().__init__(rule, context)
        self._states = frozenset(rule.states)

    def new_data(self) -> float | None:
        return None  # the time of the latest state

    def observe(self, group: Group, event: AnyEvent, time: float, now: float) -> Judgement | None:
        if not isinstance(event, StatusEvent):
            return None
        if group.data is not None and time < group.data:
            return None
        group.data = time
        return (event.state in self._states, 1.0 if event.state == "up" else 0.0)
