"""`share`: the percentage (0-100) of the distinct entities seen in the group whose latest state is in
`states`, compared with a threshold (e.g. `>= 50`: half the cell sites of a commune are down).

Each entity counts by its latest status event (by event time). A group remembers at most
`MAX_ENTITIES` entities; events of further new entities are not counted (and are counted in
`ioc_rule_samples_dropped_total{rule}`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from ioc.rules.kinds.base import Context, Judgement, Kind, judge_comparison
from ioc.rules.spec import Comparison, RuleBase
from ioc.rules.timing import Group
from pydantic import Field

from ioc.envelope import AnyEvent, StatusEvent, StatusState

MAX_ENTITIES = 100_000


class ShareRule(Comparison, RuleBase):
    kind: Literal["share"]
    judges = frozenset(("status",))
    has_threshold = True
    states: Annotated[list[StatusState], Field(min_length=1)] = ["down"]  # noqa: RUF012 (pydantic copies it)


class _Entities:
    __slots__ = ("counted", "latest")

    def __init__(self) -> None:
        self.latest: dict[str, tuple[float, bool]] = {}  # entity -> (time of its latest state, in states)
        self.counted = 0  # entities whose latest state is in `states`


class ShareKind(Kind[ShareRule]):
    model = ShareRule

    def __init__(self, rule: ShareRule, context: Context) -> None:
        super().__init__(rule, context)
        self._states = frozenset(rule.states)

    def new_data(self) -> _Entities:
        return _Entities()

    def observe(self, group: Group, event: AnyEvent, time: float, now: float) -> Judgement | None:
        if not isinstance(event, StatusEvent):
            return None
        entities: _Entities = group.data
        previous = entities.latest.get(event.entity)
        if previous is None and len(entities.latest) >= MAX_ENTITIES:
            self.context.dropped += 1
            return None
        if previous is not None and time < previous[0]:
            return None
        counted = event.state in self._states
        entities.counted += counted - (previous[1] if previous is not None else False)
        entities.latest[event.entity] = (time, counted)
        return self._judge(group, now)

    def _judge(self, group: Group, now: float) -> Judgement:
        entities: _Entities = group.data
        share = 100.0 * entities.counted / len(entities.latest) if entities.latest else None
        return judge_comparison(self.rule, self.context, group, share, None, now)

    def dump(self, data: Any) -> Any:
        entities: _Entities = data
        return {entity: [time, counted] for entity, (time, counted) in entities.latest.items()}

    def load(self, raw: Any) -> Any:
        entities = _Entities()
        for entity, (time, counted) in (raw or {}).items():
            entities.latest[entity] = (float(time), bool(counted))
            entities.counted += bool(counted)
        return entities
