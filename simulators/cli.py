"""`ioc sim` (simulators/README.md): `run`, `list` and `verify` scenarios. Also `python -m
ioc.simulators.cli`.

Exit codes: 0 done; 1 the play failed (nothing reachable, events refused) or `verify` found
differences; 2 a bad scenario or flag (`file:line: message`), before anything is sent.
"""

from __future__ import annotations

import signal
import threading
from datetime import datetime
from types import FrameType
from typing import Annotated

import httpx
import structlog
import typer
from ioc.simulators.play import Plan, Player, plan
from ioc.simulators.progress import Progress
from ioc.simulators.publish import Publisher, PublishError, PublishStats, open_publisher
from ioc.simulators.scenario import Scenario, load_scenario, resolve, shipped
from ioc.simulators.verify import fetch_alerts, wait_for_verdict

from ioc.areas import local_date
from ioc.config import parse_duration
from ioc.errors import ConfigError

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


def _fail(problems: list[str], code: int = 2) -> typer.Exit:
    for problem in problems:
        typer.echo(problem, err=True)
    return typer.Exit(code)


def _quiet_logs() -> None:
    """Log lines go to standard error (standard output may be the data), unless already set up."""
    if not structlog.is_configured():
        from ioc.logs import configure_logging

        configure_logging("warning", "auto")


def _prepare(scenario: str, *, duration: str | None, start: str | None, seed: int | None, speed: float,
             rate: float | None, open_ended: bool) -> tuple[Scenario, Plan]:
    """The scenario and the plan, or exit 2 naming what is wrong."""
    try:
        loaded = load_scenario(resolve(scenario))
    except ConfigError as error:
        raise _fail(error.problems) from None
    try:
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
                   open_ended=open_ended)
    except ValueError as error:
        message = str(error)
        raise _fail([message if message.startswith("--") else f"--duration: {message}"]) from None
    try:
        loaded.check_on(local_date(how.start))
    except ConfigError as error:
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
        start: StartOption = None, qos: QosOption = 1, batch: BatchOption = 1000) -> None:
    """Play SCENARIO to --to. With --speed 1 and no --duration it runs from now until stopped."""
    _quiet_logs()
    loaded, how = _prepare(scenario, duration=duration, start=start, seed=seed, speed=speed, rate=rate,
                           open_ended=True)
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
                           open_ended=False)
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


def main() -> None:
    sim_app(prog_name="ioc sim")


if __name__ == "__main__":
    main()
