"""`threshold`: the latest telemetry value of the group compared with a threshold.

The threshold is a number, a number per area level (`{province: 50, district: 20, commune: 10}`, by the
level of the group's `area` in the registry on the event's date; a group whose area has no level in the
map is not judged), or `target` (the registry's target of the metric for that level). `clear` adds
hysteresis. A late event (older than the group's latest) does not replace the latest value.
"""

from __future__ import annotations

from typing import Literal

from ioc.rules.kinds.base import Judgement, Kind, judge_comparison
from ioc.rules.spec import Comparison, RuleBase
from ioc.rules.timing import Group

from ioc.envelope import AnyEvent, TelemetryEvent


class ThresholdRule(Comparison, RuleBase):
    kind: Literal["threshold"]
    judges = frozenset(("telemetry",))
    has_threshold = True


class ThresholdKind(Kind[ThresholdRule]):
    model = ThresholdRule

    def new_data(self) -> float | None:
        return None  # the time of the latest value

    def observe(self, group: Group, event: AnyEvent, time: float, now: float) -> Judgement | None:
        if not isinstance(event, TelemetryEvent):
            return None
        if group.data is not None and time < group.data:
            return None
        group.data = time
        return judge_comparison(self.rule, self.context, group, event.value, event.metric, now)
