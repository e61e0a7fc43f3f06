"""YAML that remembers where things are, so a scenario's mistakes are reported as `file:line: message`.

PyYAML's plain loader forgets lines: this loader builds `LineDict` / `LineList` (dict and list
subclasses, so pydantic validates them like any other) and `line_of` walks a pydantic error location
back to the line it came from. The simulators' own copy of the idea (they import nothing of the daemon).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from yaml.nodes import MappingNode, SequenceNode  # type: ignore[import-untyped]

__all__ = ["LineDict", "LineList", "line_of", "read_yaml_file"]


class LineDict(dict[Any, Any]):
    """A mapping read from YAML: `line` is where it starts, `key_lines[key]` where each key is."""

    line: int = 0
    key_lines: dict[Any, int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines = {}


class LineList(list[Any]):
    """A sequence read from YAML: `line` is where it starts, `item_lines[i]` where item i is."""

    line: int = 0
    item_lines: list[int]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines = []


class _LineLoader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader whose mappings and sequences record `node.start_mark.line + 1`; repeated keys noted."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> LineDict:
        self.flatten_mapping(node)
        mapping = LineDict()
        mapping.line = node.start_mark.line + 1
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                hash(key)
            except TypeError:
                self.duplicates.append((line, "a mapping key must be a plain value"))
                continue
            if key in mapping:
                self.duplicates.append((line, f"{key}: duplicate key (first at line {mapping.key_lines[key]})"))
                continue
            mapping[key] = self.construct_object(value_node, deep=True)
            mapping.key_lines[key] = line
        return mapping

    def construct_sequence(self, node: SequenceNode, deep: bool = False) -> LineList:
        items = LineList(self.construct_object(child, deep=True) for child in node.value)
        items.line = node.start_mark.line + 1
        items.item_lines = [child.start_mark.line + 1 for child in node.value]
        return items


_LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader.construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _LineLoader.construct_sequence)


def read_yaml_file(path: Path) -> tuple[Any, list[str]]:
    """(the document, []) or (None, problems as `file:line: message`): cannot read, not UTF-8, a syntax
    error or a repeated key, each at its line."""
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        return None, [f"{label}: cannot read: {error.strerror}"]
    except UnicodeDecodeError as error:
        return None, [f"{label}: not UTF-8 (byte {error.start})"]
    loader = _LineLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        message = " ".join(part for part in (error.context, error.problem) if part)
        return None, [f"{label}:{mark.line + 1 if mark is not None else 1}: YAML syntax error: {message}"]
    except yaml.YAMLError as error:
        return None, [f"{label}:1: YAML error: {error}"]
    finally:
        loader.dispose()
    if loader.duplicates:
        return None, [f"{label}:{line}: {message}" for line, message in loader.duplicates]
    return data, []


def line_of(data: Any, loc: Sequence[str | int], default: int = 1) -> int:
    """The line of the deepest item of `data` that `loc` (a pydantic error location) reaches."""
    line = getattr(data, "line", 0) or default
    node = data
    for part in loc:
        if isinstance(node, LineDict) and part in node:
            line = node.key_lines.get(part, line)
            node = node[part]
        elif isinstance(node, LineList) and isinstance(part, int) and 0 <= part < len(node):
            line = node.item_lines[part]
            node = node[part]
        # else: a discriminator tag or a validator's own step, not a key of the text
    return line
