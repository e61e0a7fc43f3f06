"""Config loading (docs/configuration.md): strict, file:line errors, env overrides, secrets from files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ioc.config import load_settings, parse_duration, parse_size, token_sha256
from ioc.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HASH = "0" * 64


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "ioc.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return caught.value.problems


def test_the_example_config_parses() -> None:
    settings = load_settings(ROOT / "deploy" / "ioc.example.toml")
    assert settings.vendors[0].name == "dvc-binhthuan" and settings.vendors[0].rate == 2000
    assert settings.influx.batch_size == 1000 and settings.influx.flush_interval == 1.0
    assert settings.http.max_body == 8 * 1024 * 1024
    assert settings.poll[0].entity == "ioc-api"


def test_defaults_without_a_file() -> None:
    settings = load_settings(None)
    assert settings.http.listen == "127.0.0.1:8080" and settings.intake.dedup_window == 86400


def test_unknown_key_is_named_with_its_line(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[http]\nlisten = "127.0.0.1:1"\nlisen = "x"\n')
    assert problems == [f"{tmp_path / 'ioc.toml'}:3: http.lisen: unknown key"]


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "[htp]\nlisten = 1\n")
    assert problems == [f"{tmp_path / 'ioc.toml'}:1: htp: unknown key"]


def test_bad_values_give_one_line_reasons(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        '[influx]\nflush_interval = "soon"\n\n[[vendors]]\nname = "v"\nsources = ["Bad"]\n'
        f'token_sha256 = "{HASH}"\n',
    )
    assert problems[0].endswith(":2: influx.flush_interval: 'soon' is not a duration such as '30s', "
                                "'10m' or '1h30m'")
    assert ":6: vendors.0.sources.0:" in problems[1]


def test_v2_requires_org_bucket_token(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, '[influx]\napi = "v2"\n')
    assert problem.endswith(":1: influx: api = 'v2' needs org, bucket, token")


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, '[http]\nlisten = \n')
    assert problem.startswith(f"{tmp_path / 'ioc.toml'}:2:")


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ioc.toml"
    path.write_text('[http]\nlisten = "127.0.0.1:1"\n')
    monkeypatch.setenv("IOC_HTTP__LISTEN", "127.0.0.1:9999")
    monkeypatch.setenv("IOC_INFLUX__BATCH_SIZE", "100")
    settings = load_settings(path)
    assert settings.http.listen == "127.0.0.1:9999" and settings.influx.batch_size == 100


def test_secret_files_are_read_and_not_shown(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "hash").write_text(token_sha256("tok") + "\n")
    path = tmp_path / "ioc.toml"
    path.write_text(f'[mqtt]\npassword_file = "{tmp_path / "pw"}"\n\n[[operators]]\nname = "op"\n'
                    f'token_sha256_file = "{tmp_path / "hash"}"\n')
    settings = load_settings(path)
    assert settings.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings) and "s3cret" not in settings.model_dump_json()
    assert settings.operators[0].token_sha256 == token_sha256("tok")


def test_shared_tokens_are_refused(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        f'[[vendors]]\nname = "a"\nsources = ["a"]\ntoken_sha256 = "{HASH}"\n\n'
        f'[[operators]]\nname = "b"\ntoken_sha256 = "{HASH}"\n',
    )
    assert "operator 'b' has the same token as vendor 'a'" in problems[0]


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("10m", 600), ("1h30m", 5400), ("1d", 86400),
                                                ("250ms", 0.25), (5, 5.0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "1x", "m10", "-1s", "1h 30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_sizes() -> None:
    assert parse_size("8MiB") == 8 << 20 and parse_size("512KiB") == 512 << 10 and parse_size(100) == 100


def test_errors_in_nested_arrays_of_tables_name_their_own_line(tmp_path: Path) -> None:
    path = tmp_path / "ioc.toml"
    path.write_text('[alerts]\nresolved_max = 5\n\n[[alerts.webhooks]]\nurl = "https://a.example/x"\n\n'
                    '[[alerts.webhooks]]\nurl = "ftp://nope"\n\n[[alerts.inhibit]]\nsource_matchers = []\n'
                    'target_matchers = ["rule = x"]\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    problems = caught.value.problems
    assert any(problem.startswith(f"{path}:8: alerts.webhooks.1.url:") for problem in problems), problems
    assert any(problem.startswith(f"{path}:11: alerts.inhibit.0.source_matchers:") for problem in problems)
