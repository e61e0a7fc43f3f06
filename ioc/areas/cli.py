"""`ioc areas ...` (CONTRACT §10): what the registry holds, one unit over time, and the 2025 conversion.

Each command reads the registry `[areas]` of `--config` names (without one: the whole country with the
shipped targets). Exit status: 0 answered, 1 a code the registry cannot place (unknown, or a divided
commune), 2 a bad argument or config.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from ioc.areas.dates import REFORM_DAY, local_date, parse_day
from ioc.areas.registry import AreaRegistry, registry_from_settings
from ioc.areas.units import Area
from ioc.errors import ConfigError

areas_app = typer.Typer(help="The area registry (CONTRACT §10): info, show CODE, convert CODE --at DATE.",
                        no_args_is_help=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="The TOML config ([areas]).")]
AtOption = Annotated[str | None, typer.Option("--at", help="The date (YYYY-MM-DD); default: today in Vietnam.")]
_LAST_FORMER_DAY = date.fromordinal(REFORM_DAY.toordinal() - 1)


def _registry(config: Path | None) -> AreaRegistry:
    if config is None:
        return AreaRegistry.default()
    from ioc.config import load_settings

    try:
        return registry_from_settings(load_settings(config).areas)
    except ConfigError as error:
        for problem in error.problems:
            typer.echo(problem, err=True)
        raise typer.Exit(2) from None


def _day(text: str | None) -> date:
    if text is None:
        import time

        return local_date(time.time())
    try:
        return parse_day(text)
    except ValueError:
        typer.echo(f"--at: {text!r} is not a date (YYYY-MM-DD)", err=True)
        raise typer.Exit(2) from None


def _era(day: date) -> str:
    return (f"from {REFORM_DAY} (province -> commune)" if day >= REFORM_DAY
            else f"until {_LAST_FORMER_DAY} (province -> district -> commune)")


def _describe(area: Area) -> str:
    return f"{area.code} {area.name} ({area.level})"


def _period(area: Area) -> str:
    start = area.valid_from.isoformat() if area.valid_from else "..."
    end = date.fromordinal(area.valid_to.toordinal() - 1).isoformat() if area.valid_to else "..."
    return f"{start} to {end}"


@areas_app.command()
def info(config: ConfigOption = None) -> None:
    """The open data the registry was built from, and its units per era."""
    registry = _registry(config)
    source = registry.source
    if source is not None:
        typer.echo(f"data:      {source.package} {source.version} ({source.license}), "
                   f"built by `python -m ioc.areas.build`")
    typer.echo(f"served:    {', '.join(registry.served) if registry.served else 'the whole country'}")
    for label, day in ((f"until {_LAST_FORMER_DAY}", _LAST_FORMER_DAY), (f"from {REFORM_DAY}", REFORM_DAY)):
        counts = {"province": 0, "district": 0, "commune": 0}
        for area in registry.areas(day):
            counts[area.level] += 1
        shown = ", ".join(f"{number} {level}{'' if number == 1 else 's'}" for level, number in counts.items()
                          if number)
        typer.echo(f"{label + ':':<22} {shown}")
    divided = sum(1 for former in registry.former.values() if former.divided)
    typer.echo(f"former codes no longer in use from {REFORM_DAY}: {len(registry.former)} "
               f"(converted; {divided} divided communes refused)")


@areas_app.command()
def show(code: Annotated[str, typer.Argument(help="A national (GSO) code, e.g. 22918.")],
         at: AtOption = None, config: ConfigOption = None) -> None:
    """The unit CODE on a date: its parents, era, coordinates, former units; its other versions."""
    registry = _registry(config)
    day = _day(at)
    area = registry.get(code, day)
    versions = registry.versions(code)
    if area is None:
        moved = registry.convert(code, day)
        if not versions:
            typer.echo(f"{code}: not a code of the registry", err=True)
            raise typer.Exit(1)
        typer.echo(f"{code}: not in use on {day}")
        if moved is not None:
            typer.echo(f"  converts to: {', '.join(f'{new} {name}' for new, name in moved.into)}"
                       + (" (divided: refused alone)" if moved.divided else ""))
    else:
        typer.echo(_describe(area))
        typer.echo(f"  era:         {_era(day)}")
        chain = registry.ancestors(code, day)
        if chain:
            typer.echo(f"  within:      {' < '.join(_describe(above) for above in chain)}")
        if area.lat is not None and area.lon is not None:
            typer.echo(f"  coordinates: {area.lat:.5f}, {area.lon:.5f}")
        if day >= REFORM_DAY:
            former = registry.former_units(code)
            if former:
                typer.echo("  formed from:")
                for unit in former:
                    parents = registry.ancestors(unit.code, _LAST_FORMER_DAY)
                    where = f", {', '.join(p.name for p in parents)}" if parents else ""
                    typer.echo(f"    {unit.code} {unit.name}{where}")
    others = [version for version in versions if version is not area]
    if others:
        typer.echo("  other versions of the code:")
        for version in others:
            typer.echo(f"    {_period(version)}: {version.name} ({version.level}, in {version.parent or '-'})")


@areas_app.command()
def convert(code: Annotated[str, typer.Argument(help="An area code as an event carries it.")],
            at: Annotated[str, typer.Option("--at", help="The event's date (YYYY-MM-DD).")],
            config: ConfigOption = None) -> None:
    """What an event dated AT with area CODE is placed in: the code itself, its new unit, or refused."""
    registry = _registry(config)
    day = _day(at)
    area = registry.get(code, day)
    if area is not None:
        typer.echo(f"{code}: in use on {day}: {area.name} ({area.level}); kept as it is")
        return
    moved = registry.convert(code, day)
    if moved is None:
        why = "before 2025-07-01 it is not a unit either" if registry.versions(code) else "unknown"
        typer.echo(f"{code}: not a unit on {day} ({why}); kept as it is, counted alone", err=True)
        raise typer.Exit(1)
    if moved.divided:
        typer.echo(f"refused: {moved.reason()}", err=True)
        raise typer.Exit(1)
    new, name = moved.into[0]
    parent = registry.ancestors(new, day)
    within = f" in {parent[0].code} {parent[0].name}" if parent else ""
    typer.echo(f"{code} {moved.name} ({moved.level} until {_LAST_FORMER_DAY}) -> {new} {name}{within}")
