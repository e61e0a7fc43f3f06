"""Mobile network cell sites (trạm BTS/eNodeB) of several operators, per commune: `status` events.

Every commune has `sites` sites of each operator (`viettel-ran`, `vnpt-ran`, `mobifone-ran`: one
source per operator's network management system). A site reports its state in turn, every
`sites / rate` seconds, and at once when it changes, as an operator's OSS sends an alarm. Besides the
scenario's `outage` incidents, sites have short random blips (down for 20-90 s: shorter than any shipped
rule's `for`, so they never fire) and degraded periods (`degraded`: congestion, a weak link).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator

import orjson
from ioc.simulators.incidents import Outage, occurrences
from ioc.simulators.subsystems.base import Config, Context, Stream, TimeText, poisson
from pydantic import Field

NAME = "cells"
OPERATOR_PREFIX = {"viettel-ran": "VTL", "vnpt-ran": "VNP", "mobifone-ran": "MBF"}
DOWN_DETAIL = ("mất điện lưới (power lost)", "mất truyền dẫn (transmission lost)", "lỗi thiết bị (hardware)")
DEGRADED_DETAIL = ("nghẽn lưu lượng (congestion)", "suy hao truyền dẫn (weak link)")
_RANK = {"up": 0, "degraded": 1, "down": 2}


class CellsConfig(Config):
    rate: float = Field(default=0.5, gt=0)
    operators: list[str] = Field(default=["viettel-ran", "vnpt-ran", "mobifone-ran"], min_length=1)
    sites: int = Field(default=3, ge=1, le=1000)  # per operator and commune
    blips_per_day: float = Field(default=0.5, ge=0)  # short outages of a site a day
    degraded_per_day: float = Field(default=1.0, ge=0)  # degraded periods of a site a day


def sources(config: CellsConfig) -> list[str]:
    return list(config.operators)


def site_id(operator: str, area: str, number: int) -> str:
    prefix = OPERATOR_PREFIX.get(operator, operator.split("-")[0].upper()[:3])
    return f"{prefix}-{area}-{number:02d}"


def stream(config: CellsConfig, context: Context) -> Stream:
    communes = [area.code for area in context.communes()]
    sites = [(operator, area, site_id(operator, area, k + 1), "5g" if (k + len(area)) % 3 == 0 else "4g")
             for area in communes for operator in config.operators for k in range(config.sites)]
    if not sites:
        return
    rng = context.rng
    step = 1.0 / context.rate(config)
    changes = _changes(config, context, sites)
    beats = ((n * step, 1, n % len(sites), 0) for n in itertools.count())  # 1: after changes at a tie
    causes = [[0, 0, 0] for _ in sites]  # active causes per state: up (unused), degraded, down
    state = ["up"] * len(sites)
    detail: list[str | None] = [None] * len(sites)
    start, end, tag, text, dumps = context.start, context.end, context.tag, TimeText(), orjson.dumps
    n = 0
    for offset, kind, index, delta in heapq.merge(changes, beats):
        if end is not None and offset >= end:
            return
        if kind == 0:  # a change: a cause of `down` (delta +-2) or `degraded` (+-1) starts or ends
            causes[index][abs(delta)] += 1 if delta > 0 else -1
            new = "down" if causes[index][2] else "degraded" if causes[index][1] else "up"
            if new == state[index]:
                continue
            state[index] = new
            detail[index] = (None if new == "up" else
                             rng.choice(DOWN_DETAIL) if new == "down" else rng.choice(DEGRADED_DETAIL))
        operator, area, entity, tech = sites[index]
        payload: dict[str, object] = {
            "id": f"{entity}-{tag}-{n}", "source": operator, "type": "status", "time": text(start + offset),
            "area": area, "tags": {"tech": tech}, "entity": entity, "state": state[index]}
        if detail[index] is not None:
            payload["detail"] = detail[index]
        yield offset, operator, dumps(payload)
        n += 1


def _changes(config: CellsConfig, context: Context,
             sites: list[tuple[str, str, str, str]]) -> Iterator[tuple[float, int, int, int]]:
    """(offset, 0, site index, +-cause) in offset order: random blips and degraded periods, cycle by
    cycle, merged with the outages' occurrences."""
    by_place: dict[tuple[str, str], list[int]] = {}
    for index, (operator, area, _, _) in enumerate(sites):
        by_place.setdefault((operator, area), []).append(index)
    incident_changes: list[Iterator[tuple[float, int, int, int]]] = []
    for incident in context.incidents:
        if isinstance(incident, Outage):
            incident_changes.append(_outage_changes(incident, config, context, by_place))
    return heapq.merge(_random_changes(config, context, len(sites)), *incident_changes)


def _outage_changes(incident: Outage, config: CellsConfig, context: Context,
                    by_place: dict[tuple[str, str], list[int]]) -> Iterator[tuple[float, int, int, int]]:
    cause = 2 if incident.state == "down" else 1
    affected: list[int] = []
    for operator in incident.sources or config.operators:
        indexes = by_place.get((operator, incident.area), [])
        affected += indexes[:math.ceil(len(indexes) * incident.share / 100)]
    for begin, end in occurrences(incident, context.cycle, context.end):
        # Sites of one outage do not fail in the same millisecond; the ends follow the same order.
        ending = []
        for position, index in enumerate(affected):
            yield begin + position * 0.5, 0, index, cause
            ending.append((end + position * 0.5, 0, index, -cause))
        yield from ending


def _random_changes(config: CellsConfig, context: Context, count: int) -> Iterator[tuple[float, int, int, int]]:
    """Blips and degraded periods, drawn cycle by cycle (so an open-ended play is endless)."""
    rng = context.rng
    cycle, length, scale = 0, context.cycle, context.cycle / 86400
    carry: list[tuple[float, int, int, int]] = []  # ends that fall after the cycle they began in
    while context.end is None or cycle * length < context.end:
        base = cycle * length
        pending = carry
        for index in range(count):
            for _ in range(poisson(rng, config.blips_per_day * scale)):
                at = base + rng.uniform(0, length)
                pending += [(at, 0, index, 2), (at + rng.uniform(20, 90), 0, index, -2)]
            for _ in range(poisson(rng, config.degraded_per_day * scale)):
                at = base + rng.uniform(0, length)
                pending += [(at, 0, index, 1), (at + rng.uniform(120, 1200), 0, index, -1)]
        pending.sort()
        following = base + length
        yield from (item for item in pending if item[0] < following)
        carry = [item for item in pending if item[0] >= following]
        cycle += 1
    yield from carry
