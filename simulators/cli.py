"""`ioc sim` (simulators/README.md): `run`, `list` and `verify` scenarios. Also `python -m
ioc.simulators.cli`.

Exit codes: 0 done; 1 the play failed (nothing reachable, events refused) or `verify` found
differences; 2 a bad scenario or flag (`file:line: message`), before anything is sent.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from datetime import date, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated

import httpx
import structlog
import typer
from ioc.simulators.areas import AreaList, AreasError, local_date, today
from ioc.simulators.durations import parse_duration
from ioc.simulators.play import Plan, Player, plan
from ioc.simulators.progress import Progress
from ioc.simulators.publish import Publisher, PublishError, PublishStats, open_publisher
from ioc.simulators.scenario import Scenario, ScenarioError, load_scenario, resolve, shipped
from ioc.simulators.verify import fetch_alerts, wait_for_verdict

__all__ = ["sim_app"]

sim_app = typer.Typer(
    name="sim",
    help="Simulators of a province's subsystems: play scenarios to MQTT, HTTP or stdout, and verify alerts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ScenarioArg = Annotated[str, typer.Argument(help="A shipped scenario's name (see `list`) or a YAML file.")]
ToOption = Annotated[str, typer.Option("--to", help="mqtt://[USER:PASS@]HOST:PORT, http://HOST:PORT or -.")]
TokenOption = Annotated[str | None, typer.Option("--token", help="The vendor's token (HTTP; MQTT password).")]
RateOption = Annotated[float | None, typer.Option("--rate", help="Events per simulated second, in all.")]
DurationOption = Annotated[str | None, typer.Option("--duration", help="How much to play: 30s, 10m, 1d...")]
SeedOption = Annotated[int | None, typer.Option("--seed", help="The random seed (default: the scenario's).")]
SpeedOption = Annotated[float, typer.Option("--speed", help="Times real time; 0 = as fast as possible.")]
StartOption = Annotated[str | None, typer.Option("--start", help="RFC 3339 time of offset 0 (default: "
                                                                 "the play ends now).")]
QosOption = Annotated[int, typer.Option("--qos", min=0, max=1, help="MQTT QoS (0 or 1).")]
BatchOption = Annotated[int, typer.Option("--batch", min=1, max=100_000, help="Events per HTTP request.")]
HistoryOption = Annotated[str | None, typer.Option("--history", help="With --speed 1 and no --duration: first "
                                                                     "play the last D (e.g. 2h) at once, then "
                                                                     "go on in real time.")]
ApiOption = Annotated[str | None, typer.Option("--api", help="The daemon's API, http://HOST:PORT (for a "
                                                             "scenario whose areas are `api`).")]


def _fail(problems: list[str], code: int = 2) -> typer.Exit:
    for problem in problems:
        typer.echo(problem, err=True)
    return typer.Exit(code)


def _quiet_logs() -> None:
    """Warnings and errors as log lines on standard error (standard output may be the data), unless the
    caller set structlog up already."""
    if not structlog.is_configured():
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                            logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def _prepare(scenario: str, *, duration: str | None, start: str | None, seed: int | None, speed: float,
             rate: float | None, open_ended: bool, history: str | None = None,
             api: str | None = None) -> tuple[Scenario, Plan]:
    """The scenario and the plan, or exit 2 naming what is wrong."""
    try:
        loaded = load_scenario(resolve(scenario), api=api)
    except ScenarioError as error:
        raise _fail(error.problems) from None
    try:
        try:
            primed = parse_duration(history) if history is not None else 0.0
        except ValueError as error:
            raise ValueError(f"--history: {error}") from None
        length = parse_duration(duration) if duration is not None else None
        begin = None
        if start is not None:
            try:
                begin = datetime.fromisoformat(start)
            except ValueError:
                raise ValueError(f"--start: {start!r} is not an RFC 3339 time") from None
            if begin.tzinfo is None:
                raise ValueError(f"--start: {start!r} has no UTC offset (e.g. +07:00)")
        how = plan(loaded, start=begin, duration=length, seed=seed, speed=speed, rate=rate,
                   open_ended=open_ended, history=primed)
    except ValueError as error:
        message = str(error)
        raise _fail([message if message.startswith("--") else f"--duration: {message}"]) from None
    try:
        loaded.check_on(local_date(how.start))
    except ScenarioError as error:
        raise _fail(error.problems) from None
    return loaded, how


def _publisher(to: str, token: str | None, qos: int, batch: int) -> Publisher:
    try:
        return open_publisher(to, token=token, qos=qos, batch=batch)
    except ValueError as error:
        raise _fail([str(error)]) from None
    except PublishError as error:
        raise _fail([str(error)], 1) from None


def _play(loaded: Scenario, how: Plan, publisher: Publisher) -> PublishStats:
    """Play through `publisher` with progress on standard error; Ctrl-C stops cleanly."""
    stopping = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    main = threading.current_thread() is threading.main_thread()

    def interrupted(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    if main:
        signal.signal(signal.SIGINT, interrupted)
        signal.signal(signal.SIGTERM, interrupted)
    player = Player(loaded, how, publisher.publish, publisher.idle)
    title = f"sim {loaded.name}"
    try:
        with Progress(title, lambda: player.stats, lambda: publisher.stats, duration=how.duration):
            try:
                player.run(stop=stopping.is_set)
            finally:
                stats = publisher.close()
    except PublishError as error:
        raise _fail([f"{title}: {error}"], 1) from None
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if player.health is not None:
        typer.echo(f"{title}: served health endpoints on 127.0.0.1:{player.health.port}", err=True)
    for message in stats.errors:
        typer.echo(f"{title}: {message}", err=True)
    return stats


@sim_app.command("run")
def run(scenario: ScenarioArg, to: ToOption, token: TokenOption = None, rate: RateOption = None,
        duration: DurationOption = None, seed: SeedOption = None, speed: SpeedOption = 1.0,
        start: StartOption = None, qos: QosOption = 1, batch: BatchOption = 1000,
        history: HistoryOption = None, api: ApiOption = None) -> None:
    """Play SCENARIO to --to. With --speed 1 and no --duration it runs from now until stopped (after the
    last --history at once, when given)."""
    _quiet_logs()
    loaded, how = _prepare(scenario, duration=duration, start=start, seed=seed, speed=speed, rate=rate,
                           open_ended=True, history=history, api=api)
    stats = _play(loaded, how, _publisher(to, token, qos, batch))
    if stats.rejected or stats.acknowledged < stats.sent:
        raise typer.Exit(1)


@sim_app.command("list")
def list_scenarios() -> None:
    """The shipped scenarios, with a line each."""
    for name, description in shipped():
        typer.echo(f"{name:<14} {description}")


@sim_app.command("verify")
def verify(scenario: ScenarioArg, to: ToOption,
           api: Annotated[str, typer.Option("--api", help="The daemon's API: http://HOST:PORT.")],
           token: TokenOption = None, rate: RateOption = None, duration: DurationOption = None,
           seed: SeedOption = None, speed: SpeedOption = 1.0, start: StartOption = None, qos: QosOption = 1,
           batch: BatchOption = 1000,
           wait: Annotated[str, typer.Option("--wait", help="How long to wait for the alerts after the "
                                                            "play.")] = "60s") -> None:
    """Play SCENARIO to --to, then check through --api that exactly its expected alerts fired."""
    _quiet_logs()
    try:
        timeout = parse_duration(wait)
    except ValueError as error:
        raise _fail([f"--wait: {error}"]) from None
    loaded, how = _prepare(scenario, duration=duration, start=start, seed=seed, speed=speed, rate=rate,
                           open_ended=False, api=api)
    try:
        with httpx.Client(timeout=10.0) as client:
            before = set(fetch_alerts(api, client))
    except httpx.HTTPError as error:
        raise _fail([f"--api: cannot read {api.rstrip('/')}/api/v1/alerts: {error}"], 1) from None
    stats = _play(loaded, how, _publisher(to, token, qos, batch))
    if stats.rejected:
        typer.echo(f"verify: {stats.rejected} events were refused", err=True)
    verdict = wait_for_verdict(loaded, how, api, before, timeout=timeout)
    for line in verdict.matched:
        typer.echo(f"ok: {line}")
    for line in verdict.skipped:
        typer.echo(f"skipped: {line}")
    for line in verdict.problems:
        typer.echo(line)
    if not verdict.ok or stats.rejected:
        typer.echo(f"verify {loaded.name}: FAILED ({len(verdict.problems)} differences)")
        raise typer.Exit(1)
    typer.echo(f"verify {loaded.name}: ok ({len(verdict.matched)} alerts as expected)")


@sim_app.command("areas")
def areas(api: Annotated[str, typer.Option("--api", help="The daemon's API: http://HOST:PORT.")],
          province: Annotated[str, typer.Option("--province", help="The province's code, e.g. 68.")],
          at: Annotated[str | None, typer.Option("--at", help="The date (YYYY-MM-DD; default today).")] = None,
          out: Annotated[Path | None, typer.Option("--out", help="The file to write (default: stdout).")] = None,
          ) -> None:
    """Write a province's units, from the daemon's GET /api/v1/provinces/{code}/areas, as a scenario's
    areas file (`province: {areas: FILE}`)."""
    try:
        day = date.fromisoformat(at) if at is not None else today()
    except ValueError:
        raise _fail([f"--at: {at!r} is not a date (YYYY-MM-DD)"]) from None
    try:
        units = AreaList.from_api(api, province, day)
    except AreasError as error:
        raise _fail(error.problems, 1) from None
    text = units.to_csv(f"Province {province}'s units on {day}, from GET /api/v1/provinces/{province}/areas:\n"
                        f"ioc sim areas --api URL --province {province} --at {day}")
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")


def main() -> None:
    sim_app(prog_name="ioc sim")


if __name__ == "__main__":
    main()
