"""The daemon's configuration, declared once (docs/configuration.md).

One TOML file, every key overridable by `IOC_<SECTION>__<KEY>`, secrets by `*_file`. Loading is strict:
an unknown section or key is an error that names `file:line`, so a typo never passes as a default.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

# The building blocks, re-exported: callers import Duration, parse_duration ... from here.
from ioc.config_types import (
    MAX_DURATION,
    Duration,
    Size,
    _read_secret,
    _readable,
    _Section,
    parse_duration,
    parse_duration_unbounded,
    parse_size,
)
from ioc.envelope import SOURCE_PATTERN
from ioc.errors import ConfigError
from ioc.redact import redact_url

__all__ = ["MAX_DURATION", "Duration", "Size", "parse_duration", "parse_duration_unbounded", "parse_size"]


def url_problem(url: str) -> str | None:
    """What makes an http(s) URL unusable by a client (no host, a port that is not a number, spaces), or
    None. Patterns let `http://a b` or `http://` through; a client would fail on each request instead."""
    try:
        parts = urlsplit(url)
        if parts.port is not None and not parts.hostname:  # .port: ValueError when not a number in 0-65535
            return "no host"
    except ValueError as error:
        return str(error)
    if not parts.hostname:
        return "no host"
    if any(character.isspace() for character in url):
        return "a space in the URL"
    return None


def topic_filter_problem(topic: str) -> str | None:
    """Why `topic` is not an MQTT topic filter (MQTT 5 §4.7), or None."""
    if not topic:
        return "empty"
    if "\0" in topic:
        return "NUL"
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "'#' must be a whole level, the last"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


class HttpSettings(_Section):
    listen: str = "127.0.0.1:8080"
    max_body: Size = parse_size("8MiB")
    durable_wait: Duration = parse_duration("5s")  # how long a POST waits for its points to be durable before 202
    # docs/operations.md: what one client may hold. Past max_connections new connections are refused at once;
    # a client is closed when its headers, its whole body, or its idle keep-alive take longer than these.
    max_connections: int = Field(default=1024, ge=1, le=1_000_000)
    header_timeout: Duration = parse_duration("10s")
    body_timeout: Duration = parse_duration("60s")
    keepalive_timeout: Duration = parse_duration("15s")
    max_streams: int = Field(default=256, ge=0, le=100_000)  # SSE clients of /api/v1/stream, exactly
    # SSE events kept for clients that reconnect with Last-Event-ID; older ones get a `reset` event.
    sse_replay: int = Field(default=1000, ge=0, le=1_000_000)
    # False: every route but /healthz and /readyz needs a vendor, operator or viewer token.
    public_read: bool = True

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not HOST:PORT")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class MqttSettings(_Section):
    url: str = "mqtt://127.0.0.1:1883"  # mqtt://, mqtts://, or "embedded" (the demo's in-process broker)
    enabled: bool = True
    client_id: str = Field(default="ioc", min_length=1)  # a persistent session is kept under this id
    username: str = ""
    password: SecretStr = SecretStr("")
    password_file: str = ""
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = Field(default=30, ge=5, le=65535)
    session_expiry: Duration = parse_duration("7d")
    receive_maximum: int = Field(default=65535, ge=1, le=65535)
    subscribe: list[str] = ["ioc/v1/events/#"]  # every topic a vendor may publish under (docs/operations.md)
    share_group: str = ""  # MQTT 5 shared subscription group, to split intake across daemons
    reconnect_min: Duration = parse_duration("1s")
    reconnect_max: Duration = parse_duration("60s")
    # "fast": FastClient, paho with a lean receive path (connectors/mqtt/fastclient.py); "paho": stock paho,
    # the way back should a paho release break what FastClient relies on (slower intake, same behaviour).
    client: Literal["fast", "paho"] = "fast"
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_insecure: bool = False

    _password_file = field_validator("password_file")(_readable)

    @field_validator("subscribe")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        for topic in value:  # paho refuses a bad one only in its thread, when subscribing after a connect
            if (problem := topic_filter_problem(topic)) is not None:
                raise ValueError(f"{topic!r} is not an MQTT topic filter: {problem}")
        return value

    @field_validator("share_group")
    @classmethod
    def _share_group(cls, value: str) -> str:
        if any(character in value for character in "/+#\0"):
            raise ValueError(f"{value!r}: a share group name cannot hold '/', '+', '#' or NUL")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value != "embedded" and not re.match(r"^mqtts?://[^/:]+(:\d+)?/?$", value):
            hint = "; the user name and password go in username and password (or password_file)" \
                if "@" in value else ""
            raise ValueError(f"{redact_url(value)!r} is not mqtt://HOST[:PORT], mqtts://HOST[:PORT] or "
                             f"'embedded'{hint}")
        return value

    @model_validator(mode="after")
    def _secret_file(self) -> MqttSettings:
        if self.password_file:
            self.password = SecretStr(_read_secret(self.password_file))
        if self.reconnect_max < self.reconnect_min:
            raise ValueError("reconnect_max must not be less than reconnect_min")
        return self

    @property
    def tls(self) -> bool:
        return self.url.startswith("mqtts://")

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1].rstrip("/").rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        rest = self.url.split("://", 1)[1].rstrip("/")
        return int(rest.rsplit(":", 1)[1]) if ":" in rest else (8883 if self.tls else 1883)


class InfluxSettings(_Section):
    url: str = "http://127.0.0.1:8086"  # empty: no InfluxDB
    api: Literal["v1", "v2"] = "v1"
    database: str = "ioc"
    retention_policy: str = ""
    username: str = ""
    password: SecretStr = SecretStr("")
    password_file: str = ""
    org: str = ""
    bucket: str = ""
    token: SecretStr = SecretStr("")
    token_file: str = ""
    # 1000 (Telegraf's metric_batch_size too): at 5k ev/s a 5000-point write, and its 5000 MQTT acks, came
    # once a second as one burst that delayed the alerts behind it (event -> alert p99 64-92 ms; with 1000,
    # 22-26 ms: `bench/latency_bench.py`); the drain rate of `bench/ingest_bench.py` did not tell them apart.
    batch_size: int = Field(default=1000, ge=1, le=1_000_000)
    flush_interval: Duration = parse_duration("1s")
    timeout: Duration = parse_duration("10s")
    retry_min: Duration = parse_duration("250ms")
    retry_max: Duration = parse_duration("30s")
    queue_max_points: int = Field(default=200_000, ge=1)
    spool_max_points: int = Field(default=10_000_000, ge=0)
    spool_on_full: Literal["block", "drop"] = "block"

    _secret_files = field_validator("password_file", "token_file")(_readable)

    @model_validator(mode="after")
    def _v2_and_secrets(self) -> InfluxSettings:
        if self.token_file:
            self.token = SecretStr(_read_secret(self.token_file))
        if self.password_file:
            self.password = SecretStr(_read_secret(self.password_file))
        if self.url and self.api == "v2":
            missing = [k for k in ("org", "bucket") if not getattr(self, k)]
            if not self.token.get_secret_value():
                missing.append("token")
            if missing:
                raise ValueError(f"api = 'v2' needs {', '.join(missing)}")
        if self.url and (not re.match(r"^https?://", self.url) or url_problem(self.url)):
            raise ValueError(f"url {redact_url(self.url)!r} is not http(s)://HOST:PORT")
        if self.retry_max < self.retry_min:
            raise ValueError("retry_max must not be less than retry_min")
        return self


_SQLITE_URL = re.compile(r"^sqlite:///.+$")
# USER[:PASSWORD]@ is optional (libpq's defaults), HOST a name or [IPv6], then :PORT, /DB and ?options.
_POSTGRES_URL = re.compile(r"^postgres(ql)?://([^@/\s]+@)?(\[[0-9A-Fa-f:]+\]|[^:/@\s\[\]]+)(:[0-9]{1,5})?"
                           r"/[^/?\s]+(\?\S*)?$")


class StoreSettings(_Section):
    path: str = "var/ioc.db"  # the node-local SQLite file (and the shared state's, unless `url` says otherwise)
    # The shared state's database (CONTRACT §8): "" = the SQLite file `path`; `sqlite:///PATH`; or
    # `postgresql://USER@HOST:PORT/DB`, its password in `password_file` (or in the URL, from IOC_STORE__URL).
    url: str = ""
    password_file: str = ""
    # With no InfluxDB (`[influx] url = ""`) points are kept in the store, at most this many (oldest go).
    local_max_points: int = Field(default=1_000_000, ge=1)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value or _SQLITE_URL.match(value) or _POSTGRES_URL.match(value):
            return value
        if value.startswith(("postgresql:", "postgres:")):
            raise ValueError(f"{redact_url(value)!r}: expected postgresql://USER@HOST:PORT/DB")
        raise ValueError(f"{redact_url(value)!r}: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB")

    @model_validator(mode="after")
    def _password_file(self) -> StoreSettings:
        if self.password_file:
            _read_secret(self.password_file)  # unreadable: a config error now, not a failure to connect
        return self

    def database_url(self) -> str:
        """The shared state's database: `url`, else the SQLite file `path`."""
        return self.url or f"sqlite:///{self.path}"

    def password(self) -> str:
        """PostgreSQL's password from `password_file` ("" without one: the URL's, or libpq's PGPASSWORD)."""
        return _read_secret(self.password_file) if self.password_file else ""


class ClusterSettings(_Section):
    # This daemon's name among the nodes that share a PostgreSQL store (CONTRACT §8), recorded with the
    # operators' actions and in the store's node list; "" = the host name.
    node: str = Field(default="", pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{0,62})?$")
    # The leader lease in PostgreSQL (ioc.cluster): renewed every lease/3; a leader that dies is replaced
    # within lease + 5 s. Ignored with SQLite (one node, always the leader).
    lease: Duration = Field(default=parse_duration("10s"), ge=1.0)
    # A node silent this long is dropped from `GET /api/v1/cluster` (shown `down` after `lease` already).
    forget_after: Duration = Field(default=parse_duration("24h"), ge=60.0)

    def node_name(self) -> str:
        return self.node or os.uname().nodename  # the host name, as `hostname` prints it


class IntakeSettings(_Section):
    dedup_window: Duration = parse_duration("24h")
    dedup_max_keys: int = Field(default=2_000_000, ge=0)
    max_future: Duration = parse_duration("5m")
    # docs/operations.md: items in one MQTT message or HTTP body; more is refused whole.
    max_items: int = Field(default=10_000, ge=1, le=1_000_000)
    # A message whose handling killed the process is handled at most this many times, counted across
    # restarts; then it is acknowledged and dead-lettered as `poison`.
    max_deliveries: int = Field(default=3, ge=1, le=1000)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class AreasSettings(_Section):
    # The national registry (CONTRACT §10) narrowed to these provinces (codes from 2025-07-01, e.g. ["68"];
    # each includes, before 2025-07-01, the former provinces now inside it); unset: the whole country.
    provinces: list[Annotated[str, Field(pattern=r"^[0-9]{2}$")]] | None = Field(default=None, min_length=1)
    path: str = ""  # a CSV of units over the national registry (a row replaces its code for its dates)
    targets_path: str = ""  # KPI targets by level CSV; empty: the shipped ioc/data/targets.csv


SHIPPED_RULE_PACKS = "@packs"  # in `[rules] paths`: the packs shipped with the daemon (rules/packs)


class RulesSettings(_Section):
    # Files or folders of rule YAML; "@packs" stands for the shipped packs. [] runs no rules.
    paths: list[str] = [SHIPPED_RULE_PACKS]

    def resolved_paths(self) -> list[Path]:
        packs = Path(str(resources.files("ioc.rules") / "packs"))
        return [packs if path == SHIPPED_RULE_PACKS else Path(path) for path in self.paths]


class KpisSettings(_Section):
    near_due_days: int = Field(default=1, ge=0)  # near-due: due within this many working days
    holidays_file: str = ""  # YYYY-MM-DD lines, not working days; empty: the shipped ioc/data/holidays-vn.txt
    period: Literal["month"] = "month"  # the period of the rates: the calendar month (Asia/Ho_Chi_Minh)
    # The finished statuses that count in kpi.dossier.on_time_rate (numerator and denominator); the
    # denominator differs between provinces, e.g. ["done"] leaves denied and cancelled dossiers out.
    on_time_statuses: list[Literal["done", "denied", "cancelled"]] = ["done", "denied", "cancelled"]


class PollTarget(_Section):
    """A service health URL that the HTTP poll connector probes; each probe is a `status` event."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    entity: str
    source: Annotated[str, Field(pattern=SOURCE_PATTERN)] = "ioc-probe"
    area: str | None = None
    interval: Duration = parse_duration("30s")
    timeout: Duration = parse_duration("5s")
    degraded_after: Duration = parse_duration("2s")  # slower than this is `degraded`
    expect_status: list[int] = [200]


def _check_hex_sha256(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError("must be the hex SHA-256 of the token (64 lowercase hex digits)")
    return value


class _Principal(_Section):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    token_sha256: str = ""
    token_sha256_file: str = ""

    _token_file = field_validator("token_sha256_file")(_readable)

    @model_validator(mode="after")
    def _token(self) -> Any:
        if self.token_sha256_file:
            self.token_sha256 = _read_secret(self.token_sha256_file).lower()
        if not self.token_sha256:
            raise ValueError("token_sha256 (or token_sha256_file) is required")
        _check_hex_sha256(self.token_sha256)
        return self


class VendorSettings(_Principal):
    sources: Annotated[list[Annotated[str, Field(pattern=SOURCE_PATTERN)]], Field(min_length=1)]
    rate: float = Field(default=2000, gt=0)  # events per second over HTTP, then 429
    burst: float | None = None  # bucket size; default: one second of `rate`


class OperatorSettings(_Principal):
    pass


class ViewerSettings(_Principal):
    """A read-only principal: reads the API, the wall and /metrics when `[http] public_read = false`."""


# Declared beside the alert manager it configures; imported here (after _Section and Duration, which it
# uses) so that the whole configuration is still one model.
from ioc.alerts.config import AlertsSettings
from ioc.cap.config import CapSettings


class Settings(BaseSettings):
    """The whole configuration. Build it with `load_settings`, not directly."""

    model_config = SettingsConfigDict(
        env_prefix="IOC_", env_nested_delimiter="__", extra="forbid", validate_default=True,
        hide_input_in_errors=True,
    )

    http: HttpSettings = HttpSettings()
    mqtt: MqttSettings = MqttSettings()
    influx: InfluxSettings = InfluxSettings()
    store: StoreSettings = StoreSettings()
    cluster: ClusterSettings = ClusterSettings()
    intake: IntakeSettings = IntakeSettings()
    log: LogSettings = LogSettings()
    areas: AreasSettings = AreasSettings()
    rules: RulesSettings = RulesSettings()
    kpis: KpisSettings = KpisSettings()
    alerts: AlertsSettings = AlertsSettings()
    cap: CapSettings = CapSettings()
    poll: list[PollTarget] = []
    vendors: list[VendorSettings] = []
    operators: list[OperatorSettings] = []
    viewers: list[ViewerSettings] = []

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (the first source wins).
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _unique_principals(self) -> Settings:
        seen: dict[str, str] = {}
        for kind, principals in (("vendor", self.vendors), ("operator", self.operators),
                                 ("viewer", self.viewers)):
            for principal in principals:
                if principal.token_sha256 in seen:
                    raise ValueError(
                        f"{kind} {principal.name!r} has the same token as {seen[principal.token_sha256]}"
                    )
                seen[principal.token_sha256] = f"{kind} {principal.name!r}"
        return self


def token_sha256(token: str) -> str:
    """What goes in `token_sha256` for a bearer token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _toml_tables(text: str) -> set[str]:
    return {line.strip().strip("[]").strip() for line in text.splitlines() if line.strip().startswith("[")}


def _toml_line(text: str, loc: tuple[str | int, ...]) -> int | None:
    """The line of `loc` (section, [index,] key) in a TOML text: the key's line, else its table's."""
    if not loc:
        return None
    # The table is the path up to the first list index (an array of tables, `[[alerts.webhooks]]`) or,
    # without one, up to the last part; the part after it is the key.
    first_index = next((i for i, part in enumerate(loc) if isinstance(part, int)), None)
    if first_index is not None and first_index > 0:
        section, index = ".".join(str(part) for part in loc[:first_index]), loc[first_index]
        key_loc = loc[first_index + 1:]
    else:
        section, index, key_loc = (".".join(str(part) for part in loc[:-1]) or str(loc[0])), None, loc[-1:]
        if len(loc) == 1:
            key_loc = ()
        elif section not in _toml_tables(text):
            section, key_loc = str(loc[0]), loc[1:]
    assert isinstance(index, int | None)
    key = str(key_loc[0]) if key_loc else None
    header_line, seen_index, in_table = None, -1, False
    top_key_line = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("["):
            name = line.strip("[]").strip()
            in_table = False
            if name == section:
                if line.startswith("[["):
                    seen_index += 1
                    in_table = index is None or seen_index == index
                else:
                    in_table = True
                if in_table:
                    header_line = number
            continue
        if header_line is None and re.match(rf"^{re.escape(section)}\s*[=.]", line):
            top_key_line = number  # an unknown top-level key, or `section.key = ` dotted form
        if in_table and key is not None and re.match(rf"^{re.escape(key)}\s*=", line):
            return number
    return header_line or top_key_line


def _describe(error: ErrorDetails) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    message = error["msg"]
    message = message.removeprefix("Value error, ")
    return f"{loc}: {message}"


ENV_PREFIX = "IOC_"
_ENV_SECRET = re.compile(r"password|token|secret|key|headers", re.IGNORECASE)  # never echoed back
_ENV_ECHO = 64  # characters of an override's value quoted in a problem


def _env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """The `IOC_<SECTION>__<KEY>` variables as pydantic-settings reads them (case-insensitive): their
    path in the config -> the variable's name."""
    return {tuple(name[len(ENV_PREFIX):].lower().split("__")): name for name in environ
            if name.upper().startswith(ENV_PREFIX)}


def _env_label(name: str, environ: Mapping[str, str]) -> str:
    """`IOC_HTTP__LISTEN='nope'`: the variable and its value, unless the value may be a secret or is a
    whole table or list in JSON (too long to quote, and it may hold one)."""
    value = environ.get(name, "")
    if _ENV_SECRET.search(name) or value[:1] in ("{", "[") or len(value) > _ENV_ECHO:
        return f"environment {name}"
    return f"environment {name}={value!r}"


def _env_culprit(loc: tuple[str | int, ...], overrides: Mapping[tuple[str, ...], str]) -> str | None:
    """The variable whose override holds `loc` (the longest path that is a prefix of it), if any."""
    parts = tuple(str(part).lower() for part in loc)
    for length in range(len(parts), 0, -1):
        if parts[:length] in overrides:
            return overrides[parts[:length]]
    return None


def _env_within(loc: tuple[str | int, ...], overrides: Mapping[tuple[str, ...], str]) -> str:
    """For a problem of a whole table (a check over several keys): the variables that set keys in it."""
    parts = tuple(str(part).lower() for part in loc)
    names = sorted(name for path, name in overrides.items() if parts and path[:len(parts)] == parts)
    return f" (with environment {', '.join(names)})" if names else ""


def _env_problems(environ: Mapping[str, str]) -> list[str]:
    """Overrides pydantic-settings would silently ignore: `IOC_<X>__...` of no section `x` (a typo of
    one; names without `__` are left alone, other tools' variables such as IOC_FAILPOINTS are so)."""
    return [f"{_env_label(name, environ)}: unknown section {loc[0]!r}"
            for loc, name in _env_overrides(environ).items()
            if len(loc) > 1 and loc[0] not in Settings.model_fields]


def _settings_error(error: SettingsError, environ: Mapping[str, str]) -> list[str]:
    """A variable pydantic-settings could not even parse (a list or table must be JSON in the
    environment): blamed on the variables under the field it names."""
    match = re.search(r'field "([^"]+)"', str(error))
    field = match.group(1).lower() if match else ""
    names = [name for loc, name in _env_overrides(environ).items() if loc[0] == field] or [f"{ENV_PREFIX}*"]
    cause = f" ({error.__cause__})" if error.__cause__ else ""
    return [f"{_env_label(name, environ)}: {field or 'value'}: not valid JSON{cause}; a list or table is "
            'written as JSON in the environment, e.g. \'["a", "b"]\' or \'{"key": "value"}\''
            for name in names]


def load_settings(path: str | Path | None) -> Settings:
    """Read, merge with the environment and validate; raise ConfigError with every problem, each blamed on
    its `file:line` or, for an override, on its `IOC_...` variable."""
    environ = os.environ  # what pydantic-settings reads
    text, label, data = "", "<defaults>", {}
    if path is not None:
        label = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError([f"{label}: cannot read: {error.strerror}"]) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            match = re.search(r"line (\d+)", str(error))
            line = match.group(1) if match else "1"
            raise ConfigError([f"{label}:{line}: {error}"]) from None
    problems = _env_problems(environ)
    try:
        settings = Settings(**data)
    except SettingsError as error:
        raise ConfigError(problems + _settings_error(error, environ)) from None
    except ValidationError as error:
        blame = _Blame(text, label, environ)
        problems += [blame(item["loc"], _describe(item)) for item in error.errors(include_url=False)]
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return settings


class _Blame:
    """Where a problem at a config path comes from: the `IOC_...` variable that set it (the environment
    wins over the file), else the file's line that did, else the file."""

    def __init__(self, text: str, label: str, environ: Mapping[str, str]) -> None:
        self.text, self.label, self.environ = text, label, environ
        self.overrides = _env_overrides(environ)

    def __call__(self, loc: tuple[str | int, ...], message: str) -> str:
        variable = _env_culprit(loc, self.overrides)
        if variable is not None:
            return f"{_env_label(variable, self.environ)}: {message}"
        line = _toml_line(self.text, loc) if self.text else None
        where = f"{self.label}:{line}" if line else self.label
        return f"{where}: {message}{_env_within(loc, self.overrides)}"


_KEY_PATH = re.compile(r"^([a-z_]+(?:\.(?:[a-z0-9_]+))*): ")


def locate(path: str | Path | None, problem: str) -> str:
    """A problem that starts with its key (`mqtt.tls_ca: cannot read ...`, as checks made after loading
    word them) led by where that key was set, as `load_settings` words its own: `file:line: ...` or
    `environment IOC_...: ...`. `ioc check` and `ioc run` print every such problem through here."""
    text, label = "", str(path) if path is not None else "<defaults>"
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError:
            pass
    match = _KEY_PATH.match(problem)
    if match is None:
        return f"{label}: {problem}"
    loc = tuple(int(part) if part.isdigit() else part for part in match.group(1).split("."))
    return _Blame(text, label, os.environ)(loc, problem)


# --- what only the machine can tell: checked by `ioc check` and by the daemon before it builds anything --


def check_runtime(settings: Settings) -> None:
    """The problems of a valid config that only this machine shows and that `ioc run` would otherwise
    meet halfway through its start: the HTTP address, the store's folder, URLs the clients would refuse.
    ConfigError with every problem, each led by its key (`locate` adds the file and line)."""
    problems: list[str] = []
    if settings.mqtt.enabled and settings.mqtt.url == "embedded":
        problems.append("mqtt.url: 'embedded' is only available in `ioc demo`")
    problems += _listen_problems(settings.http)
    problems += _store_problems("store.path", settings.store.path)
    if settings.store.url.startswith("sqlite:///"):
        problems += _store_problems("store.url", settings.store.url.removeprefix("sqlite://"))
    urls = [(f"alerts.webhooks.{i}.url", hook.url) for i, hook in enumerate(settings.alerts.webhooks)]
    urls += [(f"alerts.alertmanagers.{i}.url", am.url) for i, am in enumerate(settings.alerts.alertmanagers)]
    urls += [(f"poll.{i}.url", target.url) for i, target in enumerate(settings.poll)]
    if settings.alerts.external_url:
        urls.append(("alerts.external_url", settings.alerts.external_url))
    for key, url in urls:
        if (why := url_problem(url)) is not None:
            problems.append(f"{key}: {redact_url(url)!r} is not a usable URL: {why}")
    if problems:
        raise ConfigError(problems)


def _listen_problems(http: HttpSettings) -> list[str]:
    """The address of `listen` must be this machine's: bound here on a free port (never the configured
    one, which a running daemon may hold while `ioc check` looks at its next config)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            http.host or None, http.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind((address[0], 0, *address[2:]))
    except OSError as error:
        return [f"http.listen: cannot listen on {http.host}:{http.port}: {error.strerror or error}"]
    return []


def _store_problems(key: str, path: str) -> list[str]:
    """The store (and the spool in it) can be opened: an existing file, or a file that can be made in
    its folder or in the nearest existing folder above it (the daemon creates the missing ones)."""
    if path == ":memory:":
        return []
    target = Path(path)
    if target.is_dir():
        return [f"{key}: {path} is a folder; give the store's file, e.g. {target / 'ioc.db'}"]
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return [f"{key}: cannot create {path}: {folder} is not a folder"]
    try:
        if target.exists():
            with target.open("r+b"):
                pass
        else:
            with tempfile.TemporaryFile(dir=folder):
                pass
    except OSError as error:
        where = target if target.exists() else folder
        return [f"{key}: cannot write {path}: {where}: {error.strerror or error}"]
    return []
