"""Which rules an event matches, at a cost that stays flat as the number of rules grows.

A province has thousands of rules, nearly all about one metric, source or entity each. Every rule is
filed under its most selective literal constraint, in the order `entity`, `metric`, a tag, `source`,
`type` (a dict per field from value to the rules that require it); rules with no literal constraint at
all are in a short list checked for every event. An event looks up only the buckets of its own values,
so it meets the rules that could match it (not the 10 000 that cannot) and checks each fully: the other
fields, regular expressions, `area` (that area or a descendant, `AreaRegistry.is_within`) and every tag
in `match.tags`. Filing each rule once (rather than intersecting one candidate set per field) keeps the
work per event to one dict lookup per field plus the candidates, with no set arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ioc.rules.labels import event_label
from ioc.rules.spec import Pattern, RuleBase

from ioc.areas import local_date
from ioc.envelope import AnyEvent
from ioc.regex import fullmatches

if TYPE_CHECKING:
    from ioc.areas import AreaRegistry

__all__ = ["Matcher", "RuleIndex"]

T = TypeVar("T")
_ALL_TYPES = frozenset(("telemetry", "status", "dossier"))
_FIELDS = ("source", "metric", "entity")


def _constraint(value: object) -> tuple[frozenset[str] | None, Any]:
    if isinstance(value, str):
        return frozenset((value,)), None
    if isinstance(value, list):
        return frozenset(value), None
    if isinstance(value, Pattern):
        return None, value.compiled()
    return None, None


class Matcher:
    """One rule's `match` (and the event types its kind judges) compiled for checking events."""

    __slots__ = ("areas", "fields", "tags", "types")

    def __init__(self, rule: RuleBase) -> None:
        self.types = rule.event_types()
        self.fields: list[tuple[str, frozenset[str] | None, Any]] = []
        for name in _FIELDS:
            values, pattern = _constraint(getattr(rule.match, name))
            if values is not None or pattern is not None:
                self.fields.append((name, values, pattern))
        area = rule.match.area
        self.areas: tuple[str, ...] = (area,) if isinstance(area, str) else tuple(area or ())
        self.tags = [(key, *_constraint(value)) for key, value in (rule.match.tags or {}).items()]

    def literal(self, name: str) -> frozenset[str] | None:
        """The values field `name` must take, when it is a literal constraint."""
        if name == "type":
            return self.types if self.types != _ALL_TYPES else None
        return next((values for field, values, _ in self.fields if field == name), None)

    def matches(self, event: AnyEvent, areas: AreaRegistry | None, day: date | None = None) -> bool:
        """Whether `event` satisfies every constraint (`day`: the event's local date, for `area`)."""
        if event.type not in self.types:
            return False
        for name, values, pattern in self.fields:
            if not _accepts(event_label(event, name), values, pattern):
                return False
        if self.areas:
            area = event.area
            if area is None:
                return False
            if area not in self.areas:
                if areas is None:
                    return False
                when = day or local_date(event.time.timestamp())
                if not any(areas.is_within(area, ancestor, when) for ancestor in self.areas):
                    return False
        tags = event.tags
        for key, values, pattern in self.tags:
            if not _accepts(tags.get(key) if tags else None, values, pattern):
                return False
        return True


class RuleIndex(Generic[T]):
    """`match(event)` -> the items (in the order given) whose rule matches the event."""

    def __init__(self, entries: Sequence[tuple[RuleBase, T]], areas: AreaRegistry | None) -> None:
        self._areas = areas
        self._items = [item for _, item in entries]
        self._matchers = [Matcher(rule) for rule, _ in entries]
        self._by: dict[str, dict[str, list[int]]] = {name: {} for name in ("entity", "metric", "source", "type")}
        self._by_tag: dict[tuple[str, str], list[int]] = {}
        self._scan: list[int] = []
        for position, matcher in enumerate(self._matchers):
            self._file(position, matcher)

    def __len__(self) -> int:
        return len(self._items)

    def _file(self, position: int, matcher: Matcher) -> None:
        for name in ("entity", "metric"):
            values = matcher.literal(name)
            if values is not None:
                for value in values:
                    self._by[name].setdefault(value, []).append(position)
                return
        for key, values, _ in matcher.tags:
            if values is not None:
                for value in values:
                    self._by_tag.setdefault((key, value), []).append(position)
                return
        for name in ("source", "type"):
            values = matcher.literal(name)
            if values is not None:
                for value in values:
                    self._by[name].setdefault(value, []).append(position)
                return
        self._scan.append(position)

    def candidates(self, event: AnyEvent) -> list[int]:
        """Positions of the rules filed where this event looks (a superset of the matches), sorted."""
        by = self._by
        found: list[int] = []
        buckets = 0
        fields = event.__dict__  # a model's field values; getattr of a missing one goes through pydantic
        for name, value in (("type", event.type), ("source", event.source),
                            ("metric", fields.get("metric")), ("entity", fields.get("entity"))):
            if value is not None:
                bucket = by[name].get(value)
                if bucket:
                    found += bucket
                    buckets += 1
        if self._by_tag and event.tags:
            for pair in event.tags.items():
                bucket = self._by_tag.get(pair)
                if bucket:
                    found += bucket
                    buckets += 1
        if self._scan:
            found += self._scan
            buckets += 1
        if buckets > 1:
            found.sort()
        return found

    def match(self, event: AnyEvent) -> list[T]:
        """The items whose rule matches `event`, in the order they were given."""
        matchers, areas, items = self._matchers, self._areas, self._items
        return [items[position] for position in self.candidates(event)
                if matchers[position].matches(event, areas)]


def _accepts(value: str | None, values: frozenset[str] | None, pattern: Any) -> bool:
    """Whether one label or tag value satisfies a constraint: present, among `values`, matching `pattern`."""
    if value is None:
        return False
    if values is not None and value not in values:
        return False
    return pattern is None or fullmatches(pattern, value)
