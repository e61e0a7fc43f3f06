"""docs/configuration.md is the whole config reference: every key of the pydantic models (`ioc.config`,
`ioc.alerts.config`) is in the table of its section, no table names a key that does not exist, and each
documented default is the model's default."""

from __future__ import annotations

import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, SecretStr, TypeAdapter
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ioc.config import Settings

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "configuration.md"
# `## `[http]``, `### `[[alerts.webhooks]]``: the section a table below it documents.
SECTION_HEADING = re.compile(r"^#{2,4} `\[\[?([a-z_.]+)\]\]?`\s*$")
KEY_ROW = re.compile(r"^\| `([a-z_0-9]+)` \|")
# A row's cells: key | type | default | meaning.
DEFAULT_CELL = 3


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (`HttpSettings`, or the item of `list[WebhookSettings]`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def model_keys(model: type[BaseModel] = Settings, prefix: str = "") -> dict[tuple[str, str], FieldInfo]:
    """Every (section, key) of the configuration and its field: nested models become sections
    (`alerts.webhooks`), everything else is a key of its section."""
    keys: dict[tuple[str, str], FieldInfo] = {}
    for name, field in model.model_fields.items():
        inner = _model_of(field.annotation)
        section = f"{prefix}.{name}" if prefix else name
        if inner is not None:
            keys.update(model_keys(inner, section))
        else:
            assert prefix, f"a top-level key {name!r} outside any section"
            keys[(prefix, name)] = field
    return keys


def documented() -> dict[tuple[str, str], str]:
    """(section, key) -> the default cell, from the tables of docs/configuration.md."""
    found: dict[tuple[str, str], str] = {}
    section = None
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        heading = SECTION_HEADING.match(line)
        if heading:
            section = heading.group(1)
            continue
        if line.startswith("#"):
            section = None
            continue
        row = KEY_ROW.match(line)
        if row and section is not None:
            assert (section, row.group(1)) not in found, f"[{section}] {row.group(1)} is documented twice"
            found[(section, row.group(1))] = [cell.strip() for cell in line.split("|")][DEFAULT_CELL]
    return found


def test_the_reference_documents_sections() -> None:
    assert len(documented()) > 50


def test_every_config_key_is_documented() -> None:
    missing = sorted(f"[{section}] {key}" for section, key in set(model_keys()) - set(documented()))
    assert not missing, f"keys of the config models not in docs/configuration.md: {missing}"


def test_every_documented_key_exists() -> None:
    unknown = sorted(f"[{section}] {key}" for section, key in set(documented()) - set(model_keys()))
    assert not unknown, f"keys in docs/configuration.md that the config models do not have: {unknown}"


def _plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


@pytest.mark.parametrize(("section", "key"), sorted(set(model_keys()) & set(documented())))
def test_each_documented_default_is_the_models(section: str, key: str) -> None:
    field = model_keys()[(section, key)]
    cell = documented()[(section, key)]
    default = field.get_default(call_default_factory=True)
    if default is PydanticUndefined:
        assert cell == "required", (section, key, cell)
        return
    if default is None:
        assert cell == "none", (section, key, cell)
        return
    assert cell.startswith("`") and cell.endswith("`"), f"[{section}] {key}: write the default as TOML: {cell}"
    written = tomllib.loads(f"value = {cell[1:-1]}")["value"]
    # Read the way the config reads it: "5s" -> 5.0 seconds, "8MiB" -> bytes.
    annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    assert _plain(adapter.validate_python(written)) == _plain(default), (section, key, cell, default)
