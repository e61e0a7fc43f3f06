"""Reading rule files (docs/rules.md): `load_rules(paths)` -> RuleSet, or ConfigError with every problem.

A path is a YAML file or a folder of `*.yaml` files (not recursive, in name order). Each file is a
mapping `rules: [rule, ...]`. Every problem of every file is collected and reported as `file:line:
message` (unknown kind, bad operator, unknown key, bad duration or severity, a template naming an
unknown label, a bad regex, a YAML syntax error, a rule id defined twice), so one `ioc check` shows
them all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ioc.rules.kinds import KINDS, RULE_ADAPTER
from ioc.rules.spec import RuleSet
from ioc.rules.yamlsrc import LineDict, LineList, YamlError, line_of, load_yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from ioc.errors import ConfigError

_NAMED = re.compile(r"^([a-z_][a-z0-9_.]*): ")

__all__ = ["describe_error", "load_rules", "parse_rules", "rule_files"]


def rule_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """The files the paths name (folders: their `*.yaml` and `*.yml`), and problems with the paths."""
    files: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return files, problems


def _without_tag(loc: Sequence[str | int]) -> list[str | int]:
    """A location without the discriminator step pydantic puts first (`('threshold', 'op')` -> op)."""
    return list(loc[1:]) if loc and isinstance(loc[0], str) and loc[0] in KINDS else list(loc)


def describe_error(error: ErrorDetails) -> str:
    """A pydantic error as `field.path: message`, in the words of the rule language."""
    loc = _without_tag(error["loc"])
    where = ".".join(str(part) for part in loc).replace("for_", "for")
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    if kind == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag")
        return f"kind: unknown kind {tag!r} (expected one of {', '.join(KINDS)})"
    if kind == "union_tag_not_found":
        return f"kind: missing (one of {', '.join(KINDS)})"
    if kind == "missing":
        return f"{where}: missing"
    message = error["msg"].removeprefix("Value error, ")
    if not where:
        return message
    return f"{where}: {message}"


def _validate_file(path: Path, text: str) -> tuple[list[tuple[str | None, int, Any]], list[str]]:
    """(rule id, line, the rule or None when invalid) of each item, and the file's problems."""
    label = str(path)
    try:
        data = load_yaml(text)
    except YamlError as error:
        return [], [f"{label}:{line}: {message}" for line, message in error.problems]
    if data is None:
        return [], []  # an empty file holds no rules
    if not isinstance(data, LineDict):
        return [], [f"{label}:1: expected a mapping `rules: [rule, ...]`"]
    problems = [f"{label}:{data.key_lines[key]}: {key}: unknown key (a rule file has only `rules`)"
                for key in data if key != "rules"]
    items = data.get("rules")
    if items is None:
        return [], problems or [f"{label}:{data.line}: rules: missing"]
    if not isinstance(items, LineList):
        return [], [*problems, f"{label}:{data.key_lines['rules']}: rules: expected a list of rules"]
    rules = []
    for position, item in enumerate(items):
        line = items.item_lines[position]
        if not isinstance(item, LineDict):
            problems.append(f"{label}:{line}: rules[{position}]: expected a mapping (a rule)")
            continue
        rule_id = item.get("id") if isinstance(item.get("id"), str) else None
        name = f"rule {rule_id!r}" if rule_id is not None else f"rules[{position}]"
        try:
            rules.append((rule_id, line, RULE_ADAPTER.validate_python(item)))
        except ValidationError as error:
            rules.append((rule_id, line, None))
            found = []
            for detail in _merge_unions(error.errors(include_url=False)):
                loc = ["kind"] if detail["type"] == "union_tag_invalid" else _without_tag(detail["loc"])
                named = _NAMED.match(detail["msg"].removeprefix("Value error, "))
                if not loc and named:  # a check across fields names the field its message is about
                    loc = [int(part) if part.isdigit() else part for part in named.group(1).split(".")]
                where = line_of(item, loc, line)
                found.append((where, f"{label}:{where}: {name}: {describe_error(detail)}"))
            problems += [message for _, message in sorted(found, key=lambda pair: pair[0])]
    return rules, problems


# What pydantic calls the members of a union in an error location, and how to say it to a person.
_MEMBERS = {"str": "a string", "float": "a number", "int": "an integer", "bool": "true or false",
            "Pattern": "{re: PATTERN}"}


def _member(part: str | int) -> str | None:
    if not isinstance(part, str):
        return None
    if part in _MEMBERS:
        return _MEMBERS[part]
    if part.startswith("list["):
        return "a list"
    if part.startswith("dict["):
        return "a mapping"
    if part.startswith("literal["):
        return part.removeprefix("literal[").removesuffix("]")
    return None


def _merge_unions(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """One problem per union field: the errors of the member the value was shaped like when there is
    one (a mapping with a bad regex), else one 'expected a string, a list or {re: PATTERN}'."""
    merged: list[ErrorDetails] = []
    groups: dict[tuple[str | int, ...], list[ErrorDetails]] = {}
    for error in errors:
        loc = error["loc"]
        members = [index for index, part in enumerate(loc) if _member(part) is not None]
        if not members:
            merged.append(error)
            continue
        base = tuple(loc[:members[0]])
        if base not in groups:
            groups[base] = []
            merged.append({**error, "loc": base, "type": "union", "msg": ""})  # a placeholder
        groups[base].append(error)
    result: list[ErrorDetails] = []
    for error in merged:
        if error["type"] != "union":
            result.append(error)
            continue
        candidates = groups[tuple(error["loc"])]
        # An error inside a member (past its step in the location): the value had that member's shape.
        deep = [item for item in candidates if _member(item["loc"][-1]) is None]
        if deep:
            result += [{**item, "loc": tuple(part for part in item["loc"] if _member(part) is None)}
                       for item in deep]
            continue
        expected: list[str] = []
        for item in candidates:
            description = next(found for part in item["loc"] if (found := _member(part)) is not None)
            if description not in expected:
                expected.append(description)
        result.append({**error, "type": "value_error", "msg": f"expected {' or '.join(expected)}"})
    return result


class _Collector:
    """Rules of several files, with every problem and rule ids defined twice (valid or not)."""

    def __init__(self) -> None:
        self.rules: list[Any] = []
        self.origins: dict[str, str] = {}
        self.problems: list[str] = []
        self.files: list[str] = []

    def add(self, label: str, text: str) -> None:
        self.files.append(label)
        found, problems = _validate_file(Path(label), text)
        self.problems += problems
        for rule_id, line, rule in found:
            where = f"{label}:{line}"
            if rule_id is not None and rule_id in self.origins:
                self.problems.append(f"{where}: rule {rule_id!r}: duplicate rule id (first defined at "
                                     f"{self.origins[rule_id]})")
                continue
            if rule_id is not None:
                self.origins[rule_id] = where
            if rule is not None:
                self.rules.append(rule)

    def result(self) -> RuleSet:
        if self.problems:
            raise ConfigError(self.problems)
        return RuleSet(tuple(self.rules), self.origins, tuple(self.files))


def parse_rules(text: str, label: str = "<text>") -> RuleSet:
    """Rules from YAML text (docs, tests); problems are reported as `label:line: message`."""
    collector = _Collector()
    collector.add(label, text)
    return collector.result()


def load_rules(paths: Sequence[str | Path]) -> RuleSet:
    """Read every rule file under `paths`; raise ConfigError listing every problem as `file:line: msg`."""
    files, problems = rule_files(paths)
    collector = _Collector()
    collector.problems += problems
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            collector.problems.append(f"{path}: cannot read: {error.strerror}")
            continue
        except UnicodeDecodeError as error:
            collector.problems.append(f"{path}: not UTF-8 (byte {error.start})")
            continue
        collector.add(str(path), text)
    return collector.result()
