"""The `ioc` command (docs/operations.md)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import platform
import re
import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer

from ioc.config import Settings, check_runtime, load_settings, locate, token_sha256
from ioc.errors import ConfigError, IocError
from ioc.redact import redact_text

app = typer.Typer(
    name="ioc",
    help="Event-aggregation daemon of a provincial Intelligent Operations Center (IOC).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts name TOML tables like [[vendors]], which rich would eat
)

_NAMES_ITS_FILE = re.compile(r"^[^\s:]+:\d+: ")
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="The TOML config file.")]
# What a bug report needs besides the daemon's own version: the libraries whose behaviour it leans on.
_KEY_LIBRARIES = ("pydantic", "paho-mqtt", "fastapi", "uvicorn", "influxdb-client", "structlog")


def _installed(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def version_line() -> str:
    """`ioc 0.1.0 (Python 3.11.7; pydantic 2.13.4, paho-mqtt 2.2.0, ...)`: the installed distribution's
    version (what pip installed, not a constant in the source), the interpreter and the key libraries."""
    libraries = ", ".join(f"{name} {_installed(name)}" for name in _KEY_LIBRARIES)
    return f"ioc {_installed('ioc')} (Python {platform.python_version()}; {libraries})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="Print the version of ioc, Python and key libraries; exit.")
                       ] = False,
) -> None:
    """Event-aggregation daemon of a provincial Intelligent Operations Center (IOC)."""


@app.command("version")
def version_command() -> None:
    """Print the version of ioc, Python and key libraries (as `ioc --version`)."""
    typer.echo(version_line())


def _say(problem: str) -> None:
    """A problem on stderr; any URL in it without its password (docs/operations.md), whoever wrote the
    message."""
    typer.echo(redact_text(problem), err=True)


def _load(config: Path) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as error:
        for problem in error.problems:
            _say(problem)
        raise typer.Exit(1) from None


@app.command()
def run(config: ConfigOption) -> None:
    """Run the daemon: MQTT and HTTP intake, validation, InfluxDB, the HTTP API."""
    settings = _load(config)
    from ioc.app import run_daemon
    from ioc.logs import configure_logging

    configure_logging(settings.log.level, settings.log.format)
    try:
        asyncio.run(run_daemon(settings))
    except (IocError, BaseExceptionGroup) as error:  # the daemon's TaskGroup wraps what stopped it
        problems = _problems(error, config)
        if problems is None:
            raise
        for problem in problems:
            _say(problem)
        raise typer.Exit(1) from None


def _problems(error: BaseException, config: Path) -> list[str] | None:
    """One line per problem of a daemon that could not start, or None if something else went wrong."""
    if isinstance(error, BaseExceptionGroup):
        lines: list[str] = []
        for inner in error.exceptions:
            found = _problems(inner, config)
            if found is None:
                return None
            lines += found
        return lines
    if isinstance(error, ConfigError):
        return _located(error, config)
    if isinstance(error, IocError):
        return [f"ioc: {error}"]
    return None


def _located(error: ConfigError, config: Path) -> list[str]:
    """Problems found after loading, each led by where it comes from: problems of other files (rules,
    areas) and of other variables (IOC_FAILPOINTS) already name theirs; a config key gets its file:line
    (or its IOC_ variable). `ioc check` and `ioc run` word every problem through here."""
    return [problem if _NAMES_ITS_FILE.match(problem) or problem.startswith("IOC_") else locate(config, problem)
            for problem in error.problems]


@app.command()
def check(config: ConfigOption) -> None:
    """Validate the config, the area registry, the holidays file and every rule file, and what `ioc run`
    would meet at its start (the HTTP address, the store's folder, TLS files, IOC_FAILPOINTS): each
    problem as `file:line: message`; exit 0 or 1."""
    settings = _load(config)
    from ioc import failpoints
    from ioc.aggregators import work_calendar
    from ioc.areas import registry_from_settings
    from ioc.connectors.mqtt.session import check_settings
    from ioc.rules.loader import load_rules

    problems: list[str] = []
    rule_count = 0
    # The same checks as the daemon's start, in its order (ioc/app.py): each in one place, called by both.
    steps = [lambda: failpoints.parse(os.environ.get(failpoints.ENV, "")), lambda: check_runtime(settings)]
    if settings.mqtt.enabled and settings.mqtt.url != "embedded":  # 'embedded': check_runtime says it
        steps.append(lambda: check_settings(settings.mqtt))
    steps += [lambda: registry_from_settings(settings.areas), lambda: work_calendar(settings.kpis)]
    for step in steps:
        try:
            step()
        except ConfigError as error:
            problems += _located(error, config)
    try:
        rule_count = len(load_rules(settings.rules.resolved_paths()))
    except ConfigError as error:
        problems += error.problems
    for problem in problems:
        _say(problem)
    if problems:
        raise typer.Exit(1)
    typer.echo(
        f"{config}: ok ({len(settings.vendors)} vendors, {len(settings.operators)} operators, "
        f"{len(settings.poll)} poll targets, {rule_count} rules)"
    )


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="The wall display and API port (127.0.0.1).")] = 8080,
    mqtt_port: Annotated[int | None, typer.Option(
        help="The embedded MQTT broker's port (127.0.0.1); default 1883, or a free one if 1883 is taken.",
        show_default=False)] = None,
    broker: Annotated[str, typer.Option(help="auto (Mosquitto when installed, else amqtt), mosquitto "
                                             "or amqtt.")] = "auto",
    keep: Annotated[bool, typer.Option(help="Keep the demo's folder (store, logs) at exit.")] = False,
) -> None:
    """The whole system on this machine: embedded broker, daemon, simulated province, wall display."""
    from ioc.demo import run_demo

    if broker not in ("auto", "mosquitto", "amqtt"):
        typer.echo(f"ioc demo: --broker {broker!r}: expected auto, mosquitto or amqtt", err=True)
        raise typer.Exit(2)
    try:
        code = run_demo(port=port, mqtt_port=mqtt_port, broker_kind=broker, keep=keep)  # type: ignore[arg-type]
    except ConfigError as error:
        for problem in error.problems:
            _say(problem)
        raise typer.Exit(1) from None
    except IocError as error:
        _say(f"ioc demo: {error}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command("mosquitto-acl")
def mosquitto_acl(
    config: ConfigOption,
    tokens: Annotated[Path, typer.Option(help="File of `name:token` lines: each vendor's bearer token, "
                                         "which is also its MQTT password.")],
    out: Annotated[Path, typer.Option(help="Folder to write `passwords` and `acl` into.")],
    daemon_password: Annotated[str, typer.Option(envvar="IOC_MQTT_DAEMON_PASSWORD",
                                                 help="The daemon's own MQTT password "
                                                      "(default: [mqtt] password).")] = "",
) -> None:
    """Write a Mosquitto password_file and acl_file from the config's [[vendors]]."""
    from ioc.mosquitto_acl import main_mosquitto_acl

    raise typer.Exit(main_mosquitto_acl(config, tokens, out, daemon_password or None))


_ROLES = {"vendor": "vendors", "operator": "operators", "viewer": "viewers"}  # role -> its config table


def _role_in(config: Path, name: str) -> str | None:
    """The role NAME already has in CONFIG (a token being replaced), or None."""
    settings = _load(config)
    for role, table in _ROLES.items():
        if any(principal.name == name for principal in getattr(settings, table)):
            return role
    return None


@app.command()
def token(
    name: Annotated[str, typer.Argument(help="Who the token is for.")] = "",
    role: Annotated[str | None, typer.Option(
        help="What the token is for: vendor (pushes events), operator (acknowledges, silences) or viewer "
             "(reads); default: NAME's role in --config, else vendor.", show_default=False)] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="A config that may already name NAME: its role is the default "
                               "(replacing a token).")] = None,
) -> None:
    """Make a new random bearer token and print it with the `token_sha256` to put in the config; with
    NAME, the [[vendors]], [[operators]] or [[viewers]] block to paste."""
    if role is not None and role not in _ROLES:
        typer.echo(f"ioc token: --role {role!r}: expected vendor, operator or viewer", err=True)
        raise typer.Exit(2)
    found = _role_in(config, name) if config is not None and name else None
    if role is not None and found is not None and role != found:
        article = "an" if found == "operator" else "a"
        typer.echo(f"ioc token: {name!r} is {article} {found} in {config}, not a {role}", err=True)
        raise typer.Exit(2)
    role = role or found or "vendor"
    value = secrets.token_urlsafe(32)
    digest = token_sha256(value)
    typer.echo(f"token:        {value}")
    typer.echo(f"token_sha256: {digest}")
    if name:
        block = f'\n[[{_ROLES[role]}]]\nname = "{name}"\ntoken_sha256 = "{digest}"'
        if role == "vendor":  # a vendor sends for its sources; one named like the vendor is the usual case
            block += f'\nsources = ["{name}"]'
        typer.echo(block)


@app.command("sim", add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             help="Simulators of a province (simulators/README.md): run, list, verify, areas.")
def sim(ctx: typer.Context) -> None:
    """`ioc sim ...` is the simulators' own typer app (simulators/cli.py), imported only here: the
    simulators' import took about half of `ioc run`'s start-up, and `ioc run` never uses them."""
    from ioc.simulators.cli import sim_app

    sim_app(ctx.args, prog_name="ioc sim")


rules_app = typer.Typer(help="Rule files: unit tests (`ioc rules test`).", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
store_app = typer.Typer(help="The shared store of [store] url: its schema migrations.", no_args_is_help=True)
app.add_typer(store_app, name="store")
OptionalConfig = Annotated[Path | None, typer.Option("--config", "-c", help="The TOML config file.")]


def _store_lines(config: Path | None, command: str) -> None:
    from ioc.store import StoreError
    from ioc.store.cli import migrate_lines, status_lines

    try:
        settings = load_settings(config)  # None: the defaults and the environment
    except ConfigError as error:
        for problem in error.problems:
            _say(problem)
        raise typer.Exit(1) from None
    lines = migrate_lines if command == "migrate" else status_lines
    try:
        for line in lines(settings.store.database_url(), password=settings.store.password()):
            typer.echo(line)
    except StoreError as error:
        _say(f"ioc: {error}")
        raise typer.Exit(1) from None


@store_app.command("migrate")
def store_migrate(config: OptionalConfig = None) -> None:
    """Apply the shared store's pending schema migrations (the daemon also does at start); exit 1 if not."""
    _store_lines(config, "migrate")


@store_app.command("status")
def store_status(config: OptionalConfig = None) -> None:
    """List the shared store's schema migrations, applied (when) or pending."""
    _store_lines(config, "status")


def _add_areas() -> None:
    """`ioc areas ...`: the area registry's own typer app (ioc/areas/cli.py)."""
    from ioc.areas.cli import areas_app

    app.add_typer(areas_app, name="areas")


_add_areas()


@rules_app.command("test")
def rules_test(
    files: Annotated[list[Path], typer.Argument(help="Rule test files (YAML, CONTRACT §5).")],
) -> None:
    """Run rule unit tests on a simulated clock: exit 0 all pass, 1 a test failed, 2 a bad test file."""
    from ioc.rules.testing import run_files

    raise typer.Exit(run_files(files))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
