"""Helpers for the rule engine's tests: rules from YAML text, events at offsets, a recording engine."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from ioc.rules.engine import RuleEngine
from ioc.rules.loader import parse_rules
from ioc.rules.updates import AlertUpdate

from ioc.areas import AreaRegistry
from ioc.config import parse_duration
from ioc.envelope import EVENT_ADAPTER, AnyEvent

VN = timezone(timedelta(hours=7))
START = datetime(2026, 3, 2, 8, 0, tzinfo=VN)
T0 = START.timestamp()
_ids = iter(range(10**9))


def at(offset: str | float) -> float:
    """Unix time of an offset from START (`10m` or seconds)."""
    return T0 + (parse_duration(offset) if isinstance(offset, str) else offset)


def event(offset: str | float, **fields: Any) -> AnyEvent:
    body = {"id": f"e{next(_ids)}", "source": "s", "time": datetime.fromtimestamp(at(offset), VN), **fields}
    return EVENT_ADAPTER.validate_python(body)


def tel(offset: str | float, value: float, metric: str = "m", **fields: Any) -> AnyEvent:
    return event(offset, type="telemetry", metric=metric, value=float(value), **fields)


def status(offset: str | float, entity: str, state: str, **fields: Any) -> AnyEvent:
    return event(offset, type="status", entity=entity, state=state, **fields)


class Recorder:
    """An engine over rules given as YAML, recording every update."""

    def __init__(self, text: str, areas: AreaRegistry | None = None, started: str | float = 0) -> None:
        self.updates: list[AlertUpdate] = []
        self.engine = RuleEngine(parse_rules(text), areas=areas, on_change=self.updates.append,
                                 started_at=at(started))

    def feed(self, *events: AnyEvent) -> None:
        for item in events:
            self.engine.observe(item)

    def advance(self, offset: str | float) -> None:
        self.engine.advance(at(offset))

    def states(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], str]:
        """{(rule, labels): state} of the active alerts."""
        return {(a.rule, tuple(sorted(a.labels.items()))): a.state for a in self.engine.active()}

    def changes(self) -> list[tuple[str, str, float]]:
        """(rule, state, offset in seconds) of every update so far."""
        return [(u.rule, u.state, round(u.at - T0, 3)) for u in self.updates]
