"""`IOC_<SECTION>__<KEY>` overrides (docs/configuration.md): a problem in one is blamed on the variable,
with its value, never on a line of the file it overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ioc.config import load_settings
from ioc.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_other_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the variables a test sets (pydantic-settings reads the process environment)."""
    for name in list(os.environ):
        if name.upper().startswith("IOC_"):
            monkeypatch.delenv(name)


def problems_of(tmp_path: Path, text: str, environ: dict[str, str]) -> list[str]:
    path = tmp_path / "ioc.toml"
    path.write_text(text)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environ.items():
            patch.setenv(name, value)
        with pytest.raises(ConfigError) as caught:
            load_settings(path)
    return caught.value.problems


FILE = '[http]\nlisten = "127.0.0.1:8080"\nmax_connections = 10\n\n[mqtt]\nenabled = false\n'


def test_a_bad_override_names_the_variable_and_its_value(tmp_path: Path) -> None:
    assert problems_of(tmp_path, FILE, {"IOC_HTTP__LISTEN": "nope"}) == [
        "environment IOC_HTTP__LISTEN='nope': http.listen: 'nope' is not HOST:PORT"]
    assert problems_of(tmp_path, FILE, {"IOC_HTTP__MAX_CONNECTIONS": "abc"}) == [
        ("environment IOC_HTTP__MAX_CONNECTIONS='abc': http.max_connections: Input should be a valid integer, "
         "unable to parse string as an integer")]


def test_the_file_is_still_blamed_for_its_own_lines(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, FILE.replace("max_connections = 10", "max_connections = 0"),
                           {"IOC_HTTP__LISTEN": "nope"})
    assert problems == ["environment IOC_HTTP__LISTEN='nope': http.listen: 'nope' is not HOST:PORT",
                        (f"{tmp_path / 'ioc.toml'}:3: http.max_connections: Input should be greater than or "
                         "equal to 1")]


def test_an_unknown_key_or_section_in_the_environment_is_an_error(tmp_path: Path) -> None:
    assert problems_of(tmp_path, FILE, {"IOC_HTTP__LISTN": "x"}) == [
        "environment IOC_HTTP__LISTN='x': http.listn: unknown key"]
    # pydantic-settings ignores a variable of no section: a typo would pass silently
    assert problems_of(tmp_path, FILE, {"IOC_HTPP__LISTEN": "127.0.0.1:1"}) == [
        "environment IOC_HTPP__LISTEN='127.0.0.1:1': unknown section 'htpp'"]

def test_other_tools_variables_are_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOC_FAILPOINTS", "x=abort")  # no `__`: not a config override
    monkeypatch.setenv("IOC_ENV", "ci")
    path = tmp_path / "ioc.toml"
    path.write_text(FILE)
    assert load_settings(path).http.port == 8080


def test_secrets_and_json_values_are_not_echoed(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, FILE, {"IOC_MQTT__PASSWORD_FILE": "/nonexistent/pw"})
    assert problem == ("environment IOC_MQTT__PASSWORD_FILE: mqtt.password_file: cannot read /nonexistent/pw: "
                       "No such file or directory")
    [problem] = problems_of(tmp_path, FILE, {"IOC_VENDORS": '[{"name": "a", "token_sha256": "' + "0" * 64 + '"}]'})
    assert problem == "environment IOC_VENDORS: vendors.0.sources: Field required"


def test_a_variable_that_is_not_json_where_json_is_needed(tmp_path: Path) -> None:
    # pydantic-settings raises its own SettingsError (a traceback before): now a one-line reason
    [problem] = problems_of(tmp_path, FILE, {"IOC_MQTT__SUBSCRIBE": "ioc/v1/events/#"})
    assert problem.startswith("environment IOC_MQTT__SUBSCRIBE='ioc/v1/events/#': mqtt: not valid JSON")
    assert "written as JSON in the environment" in problem


def test_a_table_check_names_the_overrides_that_took_part(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, '[influx]\napi = "v2"\n', {"IOC_INFLUX__BUCKET": "b"})
    assert problem == (f"{tmp_path / 'ioc.toml'}:1: influx: api = 'v2' needs org, token "
                       "(with environment IOC_INFLUX__BUCKET)")


def test_the_process_environment_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOC_HTTP__LISTEN", "nope")
    path = tmp_path / "ioc.toml"
    path.write_text(FILE)
    with pytest.raises(ConfigError, match="^environment IOC_HTTP__LISTEN='nope'"):
        load_settings(path)
    monkeypatch.setenv("IOC_HTTP__LISTEN", "127.0.0.1:9")
    assert load_settings(path).http.port == 9
