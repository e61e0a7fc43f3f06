"""Small commands of `ioc` (docs/operations.md): `--version`, `token`."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ioc.cli import app
from ioc.config import load_settings, token_sha256

runner = CliRunner()


def test_version_names_ioc_python_and_key_libraries() -> None:
    import importlib.metadata

    for args in (["--version"], ["version"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        line = result.output.strip()
        assert line.startswith(f"ioc {importlib.metadata.version('ioc')} (Python {platform.python_version()}; ")
        assert f"pydantic {importlib.metadata.version('pydantic')}" in line
        assert f"paho-mqtt {importlib.metadata.version('paho-mqtt')}" in line


def test_version_as_the_installed_command() -> None:
    result = subprocess.run([sys.executable, "-m", "ioc.cli", "--version"], capture_output=True, text=True, check=False,
                            timeout=60)
    assert result.returncode == 0 and re.match(r"^ioc \d+\.\d+\S* \(Python ", result.stdout), result


def _block(output: str) -> tuple[str, str, dict[str, object]]:
    """(token, its printed sha256, the TOML block parsed)."""
    token = re.search(r"^token:\s+(\S+)$", output, re.MULTILINE)
    digest = re.search(r"^token_sha256:\s+(\S+)$", output, re.MULTILINE)
    assert token and digest, output
    block = output[output.index("\n[["):]
    return token.group(1), digest.group(1), tomllib.loads(block)


@pytest.mark.parametrize(("role", "table"), [("vendor", "vendors"), ("operator", "operators"),
                                             ("viewer", "viewers")])
def test_token_prints_the_block_of_its_role(role: str, table: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["token", "truc-ban-1", "--role", role])
    assert result.exit_code == 0, result.output
    token, digest, block = _block(result.output)
    assert digest == token_sha256(token)
    assert list(block) == [table]
    [entry] = block[table]  # type: ignore[misc]
    assert entry["name"] == "truc-ban-1" and entry["token_sha256"] == digest
    assert ("sources" in entry) == (role == "vendor")
    # the block pasted as printed is a valid config
    path = tmp_path / "ioc.toml"
    path.write_text(result.output[result.output.index("\n[["):])
    assert len(getattr(load_settings(path), table)) == 1


def test_token_defaults_to_a_vendor_and_takes_the_role_a_config_gives_the_name(tmp_path: Path) -> None:
    _, _, block = _block(runner.invoke(app, ["token", "dvc-binhthuan"]).output)
    assert list(block) == ["vendors"]
    config = tmp_path / "ioc.toml"
    config.write_text(f'[[operators]]\nname = "truc-ban-1"\ntoken_sha256 = "{"0" * 64}"\n')
    result = runner.invoke(app, ["token", "truc-ban-1", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert list(_block(result.output)[2]) == ["operators"]
    result = runner.invoke(app, ["token", "truc-ban-1", "--config", str(config), "--role", "vendor"])
    assert result.exit_code == 2 and "is a operator" not in result.output
    assert "'truc-ban-1' is an operator in" in result.output


def test_token_refuses_an_unknown_role() -> None:
    result = runner.invoke(app, ["token", "x", "--role", "boss"])
    assert result.exit_code == 2 and "expected vendor, operator or viewer" in result.output


def test_token_without_a_name_prints_no_block() -> None:
    result = runner.invoke(app, ["token"])
    assert result.exit_code == 0 and "[[" not in result.output
