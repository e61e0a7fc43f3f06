"""Events per second of `RuleEngine.observe` with 10, 1 000 and 10 000 rules, on the same event stream.

    python bench/rules_bench.py [--events 100000] [--rounds 3] [--seed 1]

The rule sets are what a province has: a few broad rules (every cell site of the network, the share of
sites down per area, air quality per area, feeds going silent) and then many narrow ones, each about one
metric, one entity or one source: thresholds and windows on `sensor.m{k}`, status of `cell-{k}`,
absence of `iot-{k}`. The event stream is the same for every size: telemetry of `sensor.m{k}`, status of
`cell-{k}` and heartbeats of `iot-{k}` for k drawn from 0..9 999, so with 10 000 rules most events meet
one narrow rule and with 10 rules almost none. The engine indexes rules by their most selective
constraint, so the work per event should grow by that one rule, not by the number of rules: the target
is a slowdown 10 -> 10 000 of at most 2x.

Events are validated models built before timing (validation is the intake's cost, not the engine's).
Each round runs a fresh engine over the whole stream; the best round counts (the box is shared).
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from ioc.rules.engine import RuleEngine
from ioc.rules.kinds import RULE_ADAPTER
from ioc.rules.spec import RuleSet

from ioc.areas import AreaRegistry
from ioc.envelope import EVENT_ADAPTER, AnyEvent

KEYS = 10_000
START = datetime(2026, 3, 2, 8, 0, tzinfo=timezone(timedelta(hours=7)))
COMMUNES = ["22723", "22693", "22696", "22699", "22702", "22705", "22708", "22711"]

BROAD: list[dict[str, Any]] = [
    {"id": "cell-down", "kind": "status", "severity": "warning", "match": {"source": "viettel-ran"},
     "group_by": ["entity", "area"], "for": "5m"},
    {"id": "coverage-outage", "kind": "share", "severity": "critical", "match": {"source": "viettel-ran"},
     "group_by": ["area"], "op": ">=", "threshold": 50},
    {"id": "aqi-bad", "kind": "threshold", "severity": "critical", "match": {"metric": "env.aqi"},
     "group_by": ["area"], "op": ">=", "threshold": 151, "clear": 120, "for": "10m"},
    {"id": "feed-silent", "kind": "absence", "severity": "warning",
     "match": {"source": ["qtmt-aqi", "viettel-ran"]}, "group_by": ["source"], "after": "15m"},
]


def narrow(k: int) -> dict[str, Any]:
    kind = k % 4
    if kind == 0:
        return {"id": f"sensor-high-{k}", "kind": "threshold", "severity": "warning",
                "match": {"metric": f"sensor.m{k}"}, "group_by": ["area"], "op": ">", "threshold": 90, "for": "5m"}
    if kind == 1:
        return {"id": f"cell-{k}-down", "kind": "status", "severity": "critical",
                "match": {"type": "status", "source": "viettel-ran", "entity": f"cell-{k}"}, "for": "2m"}
    if kind == 2:
        return {"id": f"iot-{k}-silent", "kind": "absence", "severity": "info", "match": {"source": f"iot-{k}"},
                "after": "30m"}
    return {"id": f"sensor-avg-{k}", "kind": "window", "severity": "info", "match": {"metric": f"sensor.m{k}"},
            "aggregate": "avg", "window": "10m", "op": ">", "threshold": 80}


def rule_set(size: int) -> RuleSet:
    bodies = BROAD[:size] + [narrow(k) for k in range(size - len(BROAD[:size]))]
    return RuleSet.of([RULE_ADAPTER.validate_python(body) for body in bodies])


def stream(count: int, seed: int) -> list[AnyEvent]:
    rng = random.Random(seed)
    events: list[AnyEvent] = []
    for i in range(count):
        k = rng.randrange(KEYS)
        when = START + timedelta(milliseconds=100 * i)
        area = rng.choice(COMMUNES)
        pick = rng.random()
        if pick < 0.45:
            body: dict[str, Any] = {"source": "qtmt-aqi", "type": "telemetry", "metric": f"sensor.m{k}",
                                    "value": rng.uniform(0, 100)}
        elif pick < 0.55:
            body = {"source": "qtmt-aqi", "type": "telemetry", "metric": "env.aqi", "value": rng.uniform(20, 200)}
        elif pick < 0.85:
            body = {"source": "viettel-ran", "type": "status", "entity": f"cell-{k}",
                    "state": rng.choice(["up", "up", "up", "down", "degraded"])}
        else:
            body = {"source": f"iot-{k}", "type": "telemetry", "metric": "iot.heartbeat", "value": 1.0}
        events.append(EVENT_ADAPTER.validate_python({"id": f"e{i}", "time": when, "area": area, **body}))
    return events


def measure(size: int, events: list[AnyEvent], rounds: int, areas: AreaRegistry) -> tuple[float, int]:
    rules = rule_set(size)
    best = 0.0
    changes = 0
    for _ in range(rounds):
        updates: list[Any] = []
        engine = RuleEngine(rules, areas=areas, on_change=updates.append, started_at=START.timestamp())
        began = time.perf_counter()
        for event in events:
            engine.observe(event)
        elapsed = time.perf_counter() - began
        best = max(best, len(events) / elapsed)
        changes = len(updates)
    return best, changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    areas = AreaRegistry.default()
    events = stream(args.events, args.seed)
    results = {}
    print(f"{args.events} events, best of {args.rounds} rounds")
    for size in (10, 1_000, 10_000):
        rate, changes = measure(size, events, args.rounds, areas)
        results[size] = rate
        print(f"{size:>6} rules: {rate:>10,.0f} events/s  ({1e6 / rate:.1f} us/event, {changes} alert changes)")
    slowdown = results[10] / results[10_000]
    print(f"slowdown 10 -> 10 000 rules: {slowdown:.2f}x (target <= 2x: {'met' if slowdown <= 2 else 'NOT met'})")


if __name__ == "__main__":
    main()
