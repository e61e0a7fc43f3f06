"""Playing a scenario: its subsystems' streams merged in time order, silences applied, paced.

`plan(...)` turns the command line's choices into a `Plan` (start, end, rate factor, speed); `events(...)`
is the deterministic stream of `(offset, source, payload)` (no wall clock: the same scenario, seed and
start give the same bytes); `Player` sends it through a publisher at `speed` times real time, reporting
progress. Event times are `start + offset`; without `--start` the played period ends now, so no event
is ever in the future (the daemon refuses events more than 5 minutes ahead).
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from ioc.simulators.incidents import Silent, occurrences
from ioc.simulators.scenario import Scenario
from ioc.simulators.subsystems import SUBSYSTEMS
from ioc.simulators.subsystems.base import Context, Emitted, Windows, derive_rng
from ioc.simulators.subsystems.probes import HealthServer, ProbeSchedule, ProbesConfig

__all__ = ["Plan", "PlayStats", "Player", "describe_offset", "events", "plan", "run_tag"]


@dataclass(frozen=True)
class Plan:
    """How to play: from `start` (Unix seconds) for `duration` seconds (None: open-ended), at `speed`
    times real time (0: as fast as possible), with every subsystem's rate times `rate_factor`."""

    start: float
    duration: float | None
    seed: int
    speed: float
    rate_factor: float = 1.0
    history: float = 0.0  # a live play's first offsets, sent at once: `start` is that long before now

    @property
    def live(self) -> bool:
        return self.speed == 1


def plan(scenario: Scenario, *, start: datetime | None = None, duration: float | None = None,
         seed: int | None = None, speed: float = 1.0, rate: float | None = None,
         open_ended: bool = True, history: float = 0.0, now: Callable[[], float] = time.time) -> Plan:
    """The plan for the command line's flags. With `speed` 1, no `duration` and `open_ended`, the play
    runs from now (or `start`) until stopped, after sending the last `history` seconds at once (a wall
    that is full from its first second); otherwise for `duration` (default the scenario's) from `start`
    (default now - duration, so it ends now)."""
    if speed < 0:
        raise ValueError("--speed: must be 0 (as fast as possible) or more")
    if rate is not None and rate <= 0:
        raise ValueError("--rate: must be above 0")
    factor = rate / scenario.rate() if rate is not None else 1.0
    chosen_seed = scenario.seed if seed is None else seed
    live = speed == 1 and duration is None and open_ended
    if history and not live:
        raise ValueError("--history: only for a play from now on (--speed 1, no --duration)")
    if history and start is not None:
        raise ValueError("--history: the play then starts that long before now (no --start)")
    if live:
        begin = start.timestamp() if start is not None else now() - history
        return Plan(round(begin, 3), None, chosen_seed, speed, factor, history)
    length = scenario.duration if duration is None else duration
    if length <= 0:
        raise ValueError("--duration: must be above 0")
    begin = start.timestamp() if start is not None else now() - length
    return Plan(round(begin, 3), length, chosen_seed, speed, factor)


def run_tag(seed: int, start: float) -> str:
    """The mark of one play in event ids: two plays with another seed or start never share an id."""
    return hashlib.sha256(f"{seed}\x1f{start:.3f}".encode()).hexdigest()[:8]


def events(scenario: Scenario, how: Plan) -> Iterator[Emitted]:
    """Every event of the play, in offset order, with the `silent` incidents' events left out."""
    streams = []
    tag = run_tag(how.seed, how.start)
    for name, config in scenario.subsystems.items():
        entry = SUBSYSTEMS[name]
        context = Context(start=how.start, end=how.duration, cycle=scenario.duration,
                          rate_factor=how.rate_factor, rng=derive_rng(how.seed, name), tag=tag,
                          areas=scenario.areas, province=scenario.province, former=scenario.former,
                          incidents=[i for i in scenario.incidents if i.kind in entry.incident_kinds])
        streams.append(entry.stream(config, context))
    merged: Iterator[Emitted] = heapq.merge(*streams, key=lambda item: item[0])
    silences = [incident for incident in scenario.incidents if isinstance(incident, Silent)]
    if not silences:
        return merged
    return _silenced(merged, scenario, silences, how.duration)


def _silenced(stream: Iterator[Emitted], scenario: Scenario, silences: list[Silent],
              end: float | None) -> Iterator[Emitted]:
    silenced_sources = {}
    for incident in silences:
        if incident.source is not None:
            silenced_sources[id(incident)] = {incident.source}
        else:
            config = scenario.subsystems[incident.subsystem or ""]
            silenced_sources[id(incident)] = set(SUBSYSTEMS[incident.subsystem or ""].sources(config))
    windows = Windows(silences, scenario.duration, end)
    for item in stream:
        active = windows.at(item[0])
        if active and any(item[1] in silenced_sources[id(incident)] for _, _, incident in active):
            continue
        yield item


def incident_starts(scenario: Scenario, how: Plan) -> Iterator[float]:
    """The offsets at which incidents begin, in order (for the progress display)."""
    return heapq.merge(*(((begin for begin, _ in occurrences(incident, scenario.duration, how.duration)))
                         for incident in scenario.incidents))


def describe_offset(seconds: float) -> str:
    """`5400` -> `1h30m00s`."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


@dataclass
class PlayStats:
    """What a play did so far (read by the progress display)."""

    events: int = 0
    offset: float = 0.0
    incidents: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: bool = False

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Player:
    """Sends a plan's events through `publish` at the plan's speed.

    Pacing: the event at `offset` goes out at `offset / speed` seconds after the play began; while the
    stream is ahead, `idle()` lets a batching publisher send what it holds. A `probes` subsystem with
    `serve` runs a `HealthServer` for the play's duration, its states following the play's position."""

    def __init__(self, scenario: Scenario, how: Plan, publish: Callable[[str, bytes], None],
                 idle: Callable[[], None] = lambda: None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.scenario, self.plan = scenario, how
        self._publish, self._idle, self._clock, self._sleep = publish, idle, clock, sleep
        self.stats = PlayStats()
        self._began = 0.0
        self.health: HealthServer | None = None

    def position(self) -> float:
        """The offset the play has reached (by the wall clock while pacing)."""
        if self.plan.speed == 0:
            return self.stats.offset
        return (self._clock() - self._began) * self.plan.speed

    def run(self, *, stop: Callable[[], bool] = lambda: False) -> PlayStats:
        """Play until the end (or `stop()` answers true); returns the stats."""
        # With a history, the play began that long ago: its first offsets are due at once.
        self._began = self._clock() - (self.plan.history / self.plan.speed if self.plan.speed else 0.0)
        self.stats = PlayStats()
        self._start_health()
        try:
            self._run(stop)
        finally:
            if self.health is not None:
                self.health.stop()
        self.stats.finished = True
        return self.stats

    def _run(self, stop: Callable[[], bool]) -> None:
        speed, stats, publish, clock = self.plan.speed, self.stats, self._publish, self._clock
        began = self._began
        starts = incident_starts(self.scenario, self.plan)
        next_incident = next(starts, None)
        count = 0
        for offset, source, payload in events(self.scenario, self.plan):
            if speed:
                ahead = began + offset / speed - clock()
                if ahead > 0.002:
                    self._idle()
                    ahead = began + offset / speed - clock()
                    while ahead > 0:
                        if stop():
                            return
                        self._sleep(min(ahead, 0.25))
                        ahead = began + offset / speed - clock()
            publish(source, payload)
            count += 1
            stats.offset = offset
            if count & 1023 == 0:
                stats.events = count
                if stop():
                    break
            while next_incident is not None and next_incident <= offset:
                stats.incidents += 1
                next_incident = next(starts, None)
        stats.events = count
        if self.plan.duration is not None and not stop():
            stats.offset = self.plan.duration

    def _start_health(self) -> None:
        config = self.scenario.subsystems.get("probes")
        if not isinstance(config, ProbesConfig) or not config.serve:
            return
        context = Context(start=self.plan.start, end=self.plan.duration, cycle=self.scenario.duration,
                          rate_factor=1.0, rng=derive_rng(self.plan.seed, "probes"), tag="",
                          areas=self.scenario.areas, province=self.scenario.province,
                          former=self.scenario.former,
                          incidents=self.scenario.incidents)
        schedule = ProbeSchedule(config, context)
        port = int(config.serve.rpartition(":")[2])
        self.health = HealthServer(config.services, port=port, slow_seconds=config.slow_seconds,
                                   state_of=lambda service: schedule.state_at(service, self.position())).start()
