"""One chaos run: the world up, the generator and the checker running, the nemesis's schedule played, then
everything healed, drained and checked. `run(profile, seed)` returns a `Report`; its `table()` is what
`python -m tests.chaos` prints and `failures()` what the short profile asserts is empty.

Attribution: each injection owns the time from its start to the next one's (its fault, its healing and
the quiet gap after it), so an event, an alert toggle, an RSS sample or a scrape belongs to the fault
during or right after which it was sent or taken; before the first fault is `warm-up`, after the last
`drain`.
"""

from __future__ import annotations

import bisect
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.checker import (
    AlertFinding,
    DeadLetters,
    Monitor,
    StreamResult,
    Violation,
    backlog,
    check_alerts,
    influx_count,
    read_stream,
    refused_points,
)
from tests.chaos.cluster import ClusterNemesis, ClusterWorld
from tests.chaos.generator import AlarmDriver, HttpGenerator, MqttGenerator, Stream, base_time
from tests.chaos.nemesis import Injection, Nemesis, kinds
from tests.chaos.world import (
    ALARM_SOURCE,
    ALARM_TOKEN,
    HTTP_SOURCE,
    HTTP_TOKEN,
    MQTT_SOURCE,
    World,
)


@dataclass(frozen=True)
class Profile:
    name: str
    minutes: float | None  # None: every fault kind once; else repeat the shuffled kinds this long
    mqtt_rate: float  # events/s
    http_rate: float  # events/s (in batches of http_batch)
    http_batch: int
    alarm_period: float  # seconds between alarm toggles
    hold: tuple[float, float]  # how long a fault lasts (uniform, seconds)
    gap: tuple[float, float]  # quiet time after each fault
    rss_limit_mib: float  # the stated bound on the daemon's RSS
    poison_bytes: int = 8 * 1024 * 1024
    drain_timeout: float = 120.0
    nodes: int = 1  # 2: the two-node world on PostgreSQL and its faults (cluster.py)
    # Kinds left out of the schedule: a seed replays an older run's schedule when the kinds added since
    # are left out (e.g. failpoint:evaluation.before_batch, new after issue 9's seed-61 run).
    without: tuple[str, ...] = ()
    only: tuple[str, ...] = ()  # when given, the schedule's kinds (e.g. to repeat a pair of faults)


# RSS bounds: the daemon starts near 80 MiB; an 8 MiB poison may cost a few times its size while it is
# handled; and the dedup index keeps every (source, id) of the window in memory, ~200 B a key, up to
# `[intake] dedup_max_keys` (2M by default: ~400 MiB). The short profile sends ~70k events; the long one
# fills the index within about 25 minutes.
SHORT = Profile("short", None, mqtt_rate=400, http_rate=300, http_batch=50, alarm_period=1.5,
                hold=(1.5, 3.0), gap=(0.5, 1.5), rss_limit_mib=300)
LONG = Profile("long", 30, mqtt_rate=1000, http_rate=500, http_batch=100, alarm_period=3.0,
               hold=(2.0, 6.0), gap=(1.0, 4.0), rss_limit_mib=640)
# Two nodes ingest every event each, on 2 cores: lower rates. Within 3 minutes on a 2-core machine.
TWO_NODES = Profile("two-node", None, mqtt_rate=200, http_rate=150, http_batch=50, alarm_period=1.5,
                    hold=(1.5, 3.0), gap=(1.0, 2.0), rss_limit_mib=300, nodes=2)


@dataclass
class Row:
    kind: str
    injected: int = 0
    hit: int = 0
    sent: int = 0
    acked: int = 0
    found_once: int = 0
    lost: int = 0
    refused: int = 0  # acknowledged, refused by InfluxDB (the 400 fault) and dead-lettered
    duplicated: int = 0
    max_rss_mib: float = 0.0
    counting_violations: int = 0
    alerts_twice: int = 0
    alerts_lost: int = 0
    problems: int = 0


@dataclass
class Report:
    profile: Profile
    seed: int
    seconds: float = 0.0
    rows: dict[str, Row] = field(default_factory=dict)
    injections: list[Injection] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    alert_findings: list[AlertFinding] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # seen and worth saying, not failures
    http_statuses: dict[str, int] = field(default_factory=dict)
    scrapes: int = 0
    alert_changes: int = 0  # webhook calls for the alarm rule
    max_rss_mib: float = 0.0
    workdir: str = ""

    def total(self) -> Row:
        total = Row("total")
        for row in self.rows.values():
            for name in ("injected", "hit", "sent", "acked", "found_once", "lost", "refused", "duplicated",
                         "counting_violations", "alerts_twice", "alerts_lost", "problems"):
                setattr(total, name, getattr(total, name) + getattr(row, name))
            total.max_rss_mib = max(total.max_rss_mib, row.max_rss_mib)
        return total

    def failures(self) -> list[str]:
        """Everything that breaks the contract; empty when the run passed."""
        out: list[str] = []
        total = self.total()
        if total.lost:
            out.append(f"{total.lost} acknowledged events are not in InfluxDB (e.g. {self.lost_examples[:5]})")
        if total.duplicated:
            out.append(f"{total.duplicated} duplicated or foreign points: {self.foreign[:5]}")
        out += [f"{v.kind}: {v.detail}"[:1500] for v in self.violations]
        out += [f"alert change {finding.kind}: {finding.detail}" for finding in self.alert_findings
                if finding.failure]
        if self.max_rss_mib > self.profile.rss_limit_mib:
            out.append(f"RSS reached {self.max_rss_mib:.0f} MiB, over the bound of "
                       f"{self.profile.rss_limit_mib:.0f} MiB")
        for injection in self.injections:
            out += injection.problems
            if injection.hit is False:
                out.append(f"{injection.kind}: the failpoint was never hit ({injection.detail})")
        out += self.anomalies
        return out

    def table(self) -> str:
        headers = ["fault", "injected", "fp hit", "sent", "acked", "found once", "lost", "refused+DL",
                   "duplicated", "max RSS MiB", "count viol.", "alert twice", "alert lost", "problems"]
        lines: list[list[object]] = []
        for row in [*self.rows.values(), self.total()]:
            lines.append([row.kind, row.injected, row.hit, row.sent, row.acked, row.found_once, row.lost,
                          row.refused, row.duplicated, f"{row.max_rss_mib:.0f}", row.counting_violations,
                          row.alerts_twice, row.alerts_lost, row.problems])
        table: list[list[object]] = [list(headers), *lines]
        widths = [max(len(str(cells[column])) for cells in table) for column in range(len(headers))]
        render = [("| " + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True))
                   + " |") for cells in table]
        render.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
        minutes = self.seconds / 60
        head = (f"chaos {self.profile.name} profile, seed {self.seed}, {minutes:.1f} min, "
                f"{len(self.injections)} faults, {self.scrapes} scrapes of /metrics, "
                f"{self.alert_changes} alert changes notified, "
                f"RSS bound {self.profile.rss_limit_mib:.0f} MiB")
        return head + "\n" + "\n".join(render)


def schedule(profile: Profile, rng: random.Random) -> list[str]:
    """The first round has every kind once, shuffled; the long profile repeats rounds until time is up."""
    order = [kind for kind in (ClusterNemesis.kinds() if profile.nodes == 2 else kinds())
             if kind not in profile.without and (not profile.only or kind in profile.only)]
    rng.shuffle(order)
    return order


def run(profile: Profile, seed: int, *, workdir: Path | None = None, log: bool = False) -> Report:
    rng = random.Random(seed)
    own_dir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix=f"ioc-chaos-{seed}-"))
    report = Report(profile, seed, workdir=str(workdir))
    started = time.monotonic()

    def say(text: str) -> None:
        if log:
            print(f"[{time.monotonic() - started:7.1f}s] {text}", flush=True)

    world: World | ClusterWorld = ClusterWorld.start(workdir) if profile.nodes == 2 else World.start(workdir)
    monitors: list[Monitor] = []
    dead_letters: DeadLetters | None = None
    generators: list[MqttGenerator | HttpGenerator | AlarmDriver] = []
    try:
        dead_letters = DeadLetters(world.mosquitto.port)
        monitors = [Monitor(node, rss_kill_mib=max(2048.0, profile.rss_limit_mib * 4)) for node in world.nodes]
        base = base_time()
        mqtt_stream = Stream("mqtt", MQTT_SOURCE, "chaos.mqtt", base)
        http_stream = Stream("http", HTTP_SOURCE, "chaos.http", base)
        mqtt_gen = MqttGenerator(world.mosquitto.port, mqtt_stream, rate=profile.mqtt_rate)
        http_gen = HttpGenerator(world.apis, HTTP_TOKEN, http_stream, rate=profile.http_rate,
                                 batch=profile.http_batch)
        alarm = AlarmDriver(world.apis, ALARM_TOKEN, ALARM_SOURCE, period=profile.alarm_period)
        generators = [mqtt_gen, http_gen, alarm]
        influx_url = world.influxdb.url
        nemesis = (ClusterNemesis(world, rng, hold=profile.hold) if isinstance(world, ClusterWorld) else
                   Nemesis(world, rng, dead_letters, hold=profile.hold, poison_bytes=profile.poison_bytes,
                           backlog=lambda: backlog(influx_url, mqtt_stream)))
        time.sleep(2.0)  # warm-up: the streams flow before the first fault

        deadline = started + profile.minutes * 60 if profile.minutes else None
        plan = schedule(profile, rng)
        while plan:
            kind = plan.pop(0)
            say(f"fault {kind}")
            world.set_doing(kind)
            injection = nemesis.inject(kind)
            report.injections.append(injection)
            say(f"  {injection.detail} {injection.problems or ''}")
            world.heal()
            time.sleep(rng.uniform(*profile.gap))
            if not plan and deadline is not None and time.monotonic() < deadline:
                plan = schedule(profile, rng)
            if deadline is not None and time.monotonic() >= deadline:
                break

        say("healing and draining")
        world.set_doing("drain")
        drain_started = time.monotonic()
        world.heal()
        alarm.stop(30)
        http_gen.stop(30)
        mqtt_gen.stop(60)
        _drain(world, [mqtt_stream, http_stream], dead_letters, profile.drain_timeout)
        time.sleep(2.0)  # the webhook's last deliveries, any late duplicate
        for monitor in monitors:
            monitor.stop()
        report.seconds = time.monotonic() - started
        nemesis.annotate(report.injections)
        say("checking")
        leaderless = nemesis.leaderless if isinstance(nemesis, ClusterNemesis) else []
        _check(report, world, monitors, dead_letters, [mqtt_stream, http_stream], alarm, drain_started,
               leaderless)
        for stats in (http_gen.stats, alarm.stats):
            report.anomalies += stats.anomalies[:20]
            for key, count in stats.statuses.items():
                report.http_statuses[key] = report.http_statuses.get(key, 0) + count
        if mqtt_gen.outstanding():
            report.anomalies.append(f"{mqtt_gen.outstanding()} MQTT publishes never acknowledged by the broker")
    finally:
        for generator in generators:  # after a failure of the run itself; a no-op after their own stop
            generator.stop(0)
        for monitor in monitors:
            monitor.stop()
        if dead_letters is not None:
            dead_letters.close()
        world.close()
    if own_dir and not report.failures():
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def _drain(world: World | ClusterWorld, streams: list[Stream], dead_letters: DeadLetters, timeout: float) -> None:
    """Wait until InfluxDB holds a point for at least as many events as were acknowledged and not refused
    (dead-lettered by the 400 fault), and the count has stayed still for 3 s."""
    deadline = time.monotonic() + timeout
    last, still_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        try:
            counts = [influx_count(world.influxdb.url, stream.metric) for stream in streams]
        except Exception:  # noqa: BLE001 - InfluxDB busy right after a restart: ask again
            time.sleep(1.0)
            continue
        total = sum(counts)
        letters = dead_letters.all()
        acked = sum(len(stream.acked - refused_points(letters, stream)) for stream in streams)
        if total != last:
            last, still_since = total, time.monotonic()
        elif total >= acked and time.monotonic() - still_since >= 3.0:
            return
        time.sleep(0.5)


def _check(report: Report, world: World | ClusterWorld, monitors: list[Monitor], dead_letters: DeadLetters,
           streams: list[Stream], alarm: AlarmDriver, drain_started: float,
           leaderless: list[tuple[float, float]]) -> None:
    starts = [injection.started for injection in report.injections]
    names = ["warm-up", *(injection.kind for injection in report.injections)]
    for name in names:
        report.rows.setdefault(name, Row(name))
    report.rows["drain"] = Row("drain")

    def row_at(moment: float) -> Row:
        if moment >= drain_started:
            return report.rows["drain"]
        return report.rows[names[bisect.bisect_right(starts, moment)]]

    for injection in report.injections:
        row = report.rows[injection.kind]
        row.injected += 1
        row.hit += 1 if injection.hit else 0
        row.problems += len(injection.problems) + (1 if injection.hit is False else 0)
    letters = dead_letters.all()
    for stream in streams:
        result: StreamResult = read_stream(world.influxdb.url, stream)
        refused = refused_points(letters, stream)
        report.foreign += result.foreign
        for index, first_sent in enumerate(stream.sent_at):
            row = row_at(first_sent)
            row.sent += 1
            points = result.points.get(index, 0)
            if points > 1:
                row.duplicated += points - 1
            if index not in stream.acked:
                continue
            row.acked += 1
            if points == 1:
                row.found_once += 1
            elif points == 0:
                if index in refused:
                    row.refused += 1
                else:
                    row.lost += 1
                    if len(report.lost_examples) < 50:
                        report.lost_examples.append(f"{stream.name}-{index}")
        if result.foreign:
            report.rows["drain"].duplicated += len(result.foreign)
    for monitor in monitors:
        for violation in monitor.violations:
            row = row_at(violation.at)
            if violation.kind == "counting-rule":
                row.counting_violations += 1
            else:
                row.problems += 1
        report.violations += monitor.violations
        for at, mib in monitor.rss:
            row = row_at(at)
            row.max_rss_mib = max(row.max_rss_mib, mib)
        report.max_rss_mib = max(report.max_rss_mib, monitor.max_rss())
        report.scrapes += monitor.scrapes
    changes = world.webhook.changes()
    report.alert_changes = len(changes)
    report.alert_findings = check_alerts(alarm.toggles, changes, leaderless=leaderless, by_notification_id=True)
    daemon_starts = sorted((at, f"{node.name} {kind}" if len(world.nodes) > 1 else kind)
                           for node in world.nodes for at, kind in node.starts)
    for finding in report.alert_findings:
        if finding.toggle is not None:  # what a person debugging it wants first: the last restart before
            earlier = [(at, kind) for at, kind in daemon_starts if at <= finding.toggle.sent_at]
            if earlier:
                at, kind = earlier[-1]
                finding.detail += f", {finding.toggle.sent_at - at:.1f}s after a daemon start ({kind})"
        if not finding.failure:
            report.notes.append(f"alert change {finding.kind}: {finding.detail}")
            continue
        moment = finding.toggle.sent_at if finding.toggle is not None else finding.at
        row = row_at(moment) if moment is not None else report.rows["drain"]
        if finding.kind == "lost":
            row.alerts_lost += 1
        else:
            row.alerts_twice += 1
    unacked = [toggle.number for toggle in alarm.toggles if toggle.acked_at is None]
    if unacked:
        report.anomalies.append(f"alarm toggles never acknowledged: {unacked}")
