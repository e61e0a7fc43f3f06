"""The documents stay true: every event in the README, docs/ and the connectors' READMEs validates, every
rule example in docs/rules.md loads, every relative link of the README and docs/ leads to a file of the
repository (and an anchor to a heading of it), and no document points outside the repository."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest
from ioc.rules.loader import parse_rules
from ioc.rules.testing import read_test_file

from ioc import failpoints
from ioc.ingest.decode import Accepted, decode_payload

ROOT = Path(__file__).resolve().parents[2]
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS = [*GUIDES, *sorted((ROOT / "connectors").glob("*/README.md"))]
# The JSON given to curl -d / mosquitto_pub -m in shell examples.
SHELL_JSON = re.compile(r"(?:-d|-m|--data-binary|--data|--json)\s+'(\{.*?\}|\[.*?\])'", re.DOTALL)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
# [text](target) outside code: inline links of markdown (images too).
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def examples() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for match in SHELL_JSON.finditer(doc.read_text(encoding="utf-8")):
            found.append((doc.relative_to(ROOT).as_posix(), match.group(1)))
    return found


def test_the_readme_has_examples() -> None:
    assert any(doc == "README.md" for doc, _ in examples())


@pytest.mark.parametrize(("doc", "text"), [(doc, text) for doc, text in examples()
                                           if not text.startswith('{"matchers"')])
def test_example_events_are_valid(doc: str, text: str) -> None:
    items = decode_payload(text.encode(), max_bytes=1 << 20)
    assert items and all(isinstance(item, Accepted) for item in items), (doc, items)


def _blocks(name: str, language: str) -> list[str]:
    text = (ROOT / "docs" / name).read_text(encoding="utf-8")
    return [body for lang, body in FENCE.findall(text) if lang == language]


@pytest.mark.parametrize("block", _blocks("events.md", "json"))
def test_every_event_example_of_the_envelope_page_is_valid(block: str) -> None:
    items = decode_payload(block.encode(), max_bytes=1 << 20)
    assert items and all(isinstance(item, Accepted) for item in items), items


def test_the_rules_page_has_an_example_of_every_kind() -> None:
    kinds = {rule.kind for block in _blocks("rules.md", "yaml") if block.startswith("rules:")
             for rule in parse_rules(block)}
    assert kinds == {"threshold", "window", "absence", "status", "share"}


@pytest.mark.parametrize("block", _blocks("rules.md", "yaml"))
def test_every_yaml_example_of_the_rules_page_loads(block: str, tmp_path: Path) -> None:
    if block.startswith("rule_files:"):
        path = tmp_path / "test.yaml"
        path.write_text(block, encoding="utf-8")
        spec, _ = read_test_file(path)
        assert spec.tests
    else:
        assert len(parse_rules(block, "docs/rules.md")) >= 1


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return frozenset(slug(match) for match in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE))


def links() -> list[tuple[str, str]]:
    return [(doc.relative_to(ROOT).as_posix(), target) for doc in GUIDES
            for target in LINK.findall(_prose(doc.read_text(encoding="utf-8")))]


def test_the_guides_link_to_each_other() -> None:
    targets = {target for _, target in links()}
    assert "docs/README.md" in targets
    assert {"events.md", "transports.md", "http-api.md", "configuration.md", "rules.md", "metrics.md",
            "influxdb.md", "operations.md"} <= {target.partition("#")[0] for target in targets}


@pytest.mark.parametrize(("doc", "target"), links())
def test_every_relative_link_resolves(doc: str, target: str) -> None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        return
    path, _, anchor = target.partition("#")
    here = ROOT / doc
    resolved = (here.parent / unquote(path)).resolve() if path else here
    assert resolved.is_relative_to(ROOT), f"{doc}: {target} points outside the repository"
    assert resolved.exists(), f"{doc}: {target} does not exist"
    if anchor:
        assert resolved.suffix == ".md", f"{doc}: {target}: an anchor into a file that is not markdown"
        assert anchor in anchors(resolved), f"{doc}: {target}: no heading makes #{anchor}"


def tracked(suffix: str) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z", f"*{suffix}"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode()
    return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).exists()]


def test_no_document_points_outside_the_repository() -> None:
    outside = [f"{path.relative_to(ROOT)}:{number}"
               for path in [*tracked(".md"), *tracked(".py")] if path != Path(__file__).resolve()
               for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
               if re.search(r"\.\./shared|shared/CONTRACT", line)]
    assert not outside, f"pointers to ../shared (a file users do not have): {outside}"


def test_every_failpoint_is_listed() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    table = text[text.index("### Failpoints"):]
    listed = set(re.findall(r"^\| `([a-z_.]+)` \|", table, re.MULTILINE))
    assert listed == set(failpoints.NAMES)
