"""Environment stations (quan trắc môi trường): VN_AQI and PM2.5 telemetry with a daily cycle.

One station per commune (the rules group air quality by `area`); each reports `env.aqi` and `env.pm25`
in turn, every `2 * stations / rate` seconds. VN_AQI follows a daily cycle (higher at the morning and
evening rush hours, lowest before dawn) around each station's own base, with slow random drift; an
`aqi-spike` incident ramps it to the incident's `peak`, holds it and ramps it back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import orjson
from ioc.simulators.incidents import AqiSpike
from ioc.simulators.subsystems.base import LOCAL_OFFSET, Config, Context, Stream, TimeText, Windows
from pydantic import Field

NAME = "environment"


class EnvironmentConfig(Config):
    source: str = Field(default="qtmt-aqi", pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    rate: float = Field(default=0.05, gt=0)
    stations: list[str] | int = 6  # commune codes, or how many (the incidents' communes first)
    base: float = Field(default=45.0, gt=0, le=300)  # mean VN_AQI of a station


def sources(config: EnvironmentConfig) -> list[str]:
    return [config.source]


def daily_factor(ts: float) -> float:
    """The daily cycle of air pollution at Unix time `ts` (local hour): ~0.85 at night, ~1.35 at rush hour."""
    hour = ((ts + LOCAL_OFFSET) % 86400) / 3600
    return (1.0 + 0.3 * math.exp(-(((hour - 7.5) / 1.5) ** 2)) + 0.35 * math.exp(-(((hour - 18.0) / 2.0) ** 2))
            - 0.15 * math.exp(-(((hour - 3.0) / 2.5) ** 2)))


def station_areas(config: EnvironmentConfig, context: Context, incidents: Sequence[AqiSpike]) -> list[str]:
    """The communes with a station: as listed, or the incidents' communes then the first ones."""
    if isinstance(config.stations, list):
        return list(config.stations)
    chosen: list[str] = []
    for code in [incident.area for incident in incidents] + [area.code for area in context.communes()]:
        if code not in chosen and len(chosen) < config.stations:
            chosen.append(code)
    return chosen


def _spike(incident: AqiSpike, begin: float, end: float, offset: float, normal: float) -> float:
    """The VN_AQI during one occurrence of a spike (the normal value outside it)."""
    ramp = min(incident.ramp, (end - begin) / 2)
    rise = 1.0 if ramp == 0 else min(1.0, (offset - begin) / ramp, (end - offset) / ramp)
    return max(normal, normal + (incident.peak - normal) * rise)


def stream(config: EnvironmentConfig, context: Context) -> Stream:
    incidents = [incident for incident in context.incidents if isinstance(incident, AqiSpike)]
    areas = station_areas(config, context, incidents)
    if not areas:
        return
    rng = context.rng
    bases = [config.base * rng.uniform(0.8, 1.2) for _ in areas]
    drift = [0.0] * len(areas)
    windows = [Windows([inc for inc in incidents if inc.area == code], context.cycle, context.end)
               for code in areas]
    step = 1.0 / context.rate(config)  # between two events of the subsystem
    source, start, end, tag, text = config.source, context.start, context.end, context.tag, TimeText()
    dumps = orjson.dumps
    n = 0
    while True:
        offset = n * step
        if end is not None and offset >= end:
            return
        index = (n // 2) % len(areas)
        area = areas[index]
        at = start + offset
        if n % 2 == 0:
            drift[index] = 0.9 * drift[index] + rng.gauss(0.0, 3.0)
        value = max(5.0, bases[index] * daily_factor(at) + drift[index])
        for begin, finish, incident in windows[index].at(offset):
            value = _spike(incident, begin, finish, offset, value)
        if n % 2 == 0:
            payload = {"id": f"aqi-{tag}-{n}", "source": source, "type": "telemetry", "time": text(at),
                       "area": area, "tags": {"station": f"QT-{area}"}, "metric": "env.aqi",
                       "value": round(value, 1)}
        else:
            payload = {"id": f"pm25-{tag}-{n}", "source": source, "type": "telemetry", "time": text(at),
                       "area": area, "tags": {"station": f"QT-{area}"}, "metric": "env.pm25",
                       "value": round(max(1.0, value * 0.42 + rng.gauss(0.0, 1.5)), 1), "unit": "ug/m3"}
        yield offset, source, dumps(payload)
        n += 1
