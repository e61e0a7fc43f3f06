"""`window`: an aggregate over a sliding window of event time per group, compared with a threshold.

Aggregates: `avg`, `min`, `max`, `sum` of telemetry values; `count` of matched events (any type); `rate`
= events per second over the window, i.e. `count / window seconds` (60 events in a `1m` window is a rate
of 1). The window is `(now - window, now]` of the engine's clock; it slides when time advances with no
event, so `count` falls and its alert can resolve on its own. An empty window has a count and rate of 0
and no avg/min/max/sum (the condition does not hold).

A group keeps at most `MAX_SAMPLES` samples: beyond that the oldest is dropped (counted in
`ioc_rule_samples_dropped_total{rule}`), so a flood cannot exhaust memory; the aggregate then covers the
newest `MAX_SAMPLES`. A late event (older than the group's newest sample) is counted at the newest
sample's time, so the window stays ordered; one older than the whole window is ignored.
"""

from __future__ import annotations

from collections import deque
from typing import Annotated, Any, Literal

from ioc.rules.kinds.base import Context, Judgement, Kind, judge_comparison
from ioc.rules.spec import Comparison, RuleBase
from ioc.rules.timing import Group
from pydantic import Field

from ioc.config import Duration
from ioc.envelope import AnyEvent, TelemetryEvent

MAX_SAMPLES = 10_000

Aggregate = Literal["avg", "min", "max", "sum", "count", "rate"]


class WindowRule(Comparison, RuleBase):
    kind: Literal["window"]
    has_threshold = True
    aggregate: Aggregate
    window: Annotated[Duration, Field(gt=0)]

    def kind_judges(self) -> frozenset[str]:
        return self.judges if self.aggregate in ("count", "rate") else frozenset(("telemetry",))


class _Samples:
    """The samples of one group: (seq, time, value) in time order, with a running sum and, for min/max,
    a monotonic deque of (seq, value): the candidates for the extreme, each pushed and popped once."""

    __slots__ = ("extremes", "items", "seq", "total")

    def __init__(self) -> None:
        self.items: deque[tuple[int, float, float]] = deque()
        self.total = 0.0
        self.extremes: deque[tuple[int, float]] = deque()
        self.seq = 0


class WindowKind(Kind[WindowRule]):
    model = WindowRule

    def __init__(self, rule: WindowRule, context: Context) -> None:
        super().__init__(rule, context)
        self._values = rule.aggregate not in ("count", "rate")
        self._better = {"min": float.__le__, "max": float.__ge__}.get(rule.aggregate)

    def new_data(self) -> _Samples:
        return _Samples()

    def observe(self, group: Group, event: AnyEvent, time: float, now: float) -> Judgement | None:
        if self._values and not isinstance(event, TelemetryEvent):
            return None
        samples: _Samples = group.data
        if time <= now - self.rule.window:
            return None  # older than the whole window
        if samples.items and time < samples.items[-1][1]:
            time = samples.items[-1][1]
        value = float(event.value) if isinstance(event, TelemetryEvent) else 1.0
        self._push(samples, time, value)
        self._expire(samples, now)
        return self._judge(group, now)

    def tick(self, group: Group, now: float) -> Judgement | None:
        samples: _Samples = group.data
        before = len(samples.items)
        self._expire(samples, now)
        if len(samples.items) == before:
            return None
        return self._judge(group, now)

    def next_due(self, group: Group) -> float | None:
        samples: _Samples = group.data
        return samples.items[0][1] + self.rule.window if samples.items else None

    def _push(self, samples: _Samples, time: float, value: float) -> None:
        if len(samples.items) >= MAX_SAMPLES:
            self._pop(samples)
            self.context.dropped += 1
        samples.seq += 1
        samples.items.append((samples.seq, time, value))
        samples.total += value
        if self._better is not None:
            extremes = samples.extremes
            while extremes and self._better(value, extremes[-1][1]):
                extremes.pop()
            extremes.append((samples.seq, value))

    def _pop(self, samples: _Samples) -> None:
        seq, _, value = samples.items.popleft()
        samples.total -= value
        if samples.extremes and samples.extremes[0][0] == seq:
            samples.extremes.popleft()
        if not samples.items:
            samples.total = 0.0  # no rounding drift carried over from a long run of additions and removals

    def _expire(self, samples: _Samples, now: float) -> None:
        edge = now - self.rule.window
        while samples.items and samples.items[0][1] <= edge:
            self._pop(samples)

    def _aggregate(self, samples: _Samples) -> float | None:
        count = len(samples.items)
        aggregate = self.rule.aggregate
        if aggregate == "count":
            return float(count)
        if aggregate == "rate":
            return count / self.rule.window
        if not count:
            return None
        if aggregate == "sum":
            return samples.total
        if aggregate == "avg":
            return samples.total / count
        return samples.extremes[0][1]

    def _judge(self, group: Group, now: float) -> Judgement:
        metric = group.labels.get("metric") or _single(self.rule.match.values("metric"))
        return judge_comparison(self.rule, self.context, group, self._aggregate(group.data), metric, now)

    def dump(self, data: Any) -> Any:
        return self.encode(self.snapshot(data))

    def snapshot(self, data: Any) -> Any:
        samples: _Samples = data
        return tuple(samples.items)  # a copy at C speed (the items are immutable tuples)

    def encode(self, snapshot: Any) -> Any:
        return [[time, value] for _, time, value in snapshot]

    def load(self, raw: Any) -> Any:
        samples = _Samples()
        for time, value in raw or ():
            self._push(samples, float(time), float(value))
        return samples


def _single(values: frozenset[str] | None) -> str | None:
    return next(iter(values)) if values is not None and len(values) == 1 else None
