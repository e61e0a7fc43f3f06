"""Summary templates: `{{ name }}` placeholders in otherwise literal (often Vietnamese) text.

A template is parsed once at load, so a name it cannot fill is a load error, never a blank at 3 a.m.
Numbers are rendered the way a person writes them: `160`, not `160.0`; at most two decimals, with the
decimal mark of the summary's language (Vietnamese `12,5`, English `12.5`: a wall never mixes them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Template", "format_number"]

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")


def format_number(value: float, decimal: str = ".") -> str:
    """`160.0` -> `160`, `12.345` -> `12.35`, `0.5` -> `0.5` (at most 2 decimals, no trailing zeros);
    `decimal=","` writes `0,5`. No thousands separator (`1234.5`): it would read as a decimal mark."""
    if not math.isfinite(value):
        return str(value)
    if float(value).is_integer():
        return str(int(value))
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text.replace(".", decimal)


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed summary: literal pieces and placeholder names, alternating (`parts[odd]` are names)."""

    text: str
    parts: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        """Split `text` into literals and names; raise ValueError on a stray `{{` or `}}`."""
        parts: list[str] = []
        position = 0
        for match in _PLACEHOLDER.finditer(text):
            parts.append(text[position:match.start()])
            parts.append(match.group(1))
            position = match.end()
        parts.append(text[position:])
        for literal in parts[::2]:
            if "{{" in literal or "}}" in literal:
                raise ValueError(f"{text!r}: a placeholder is written {{{{ name }}}}")
        return cls(text, tuple(parts))

    @property
    def names(self) -> tuple[str, ...]:
        return self.parts[1::2]

    def render(self, values: Mapping[str, str | float | None], decimal: str = ".") -> str:
        """Fill the placeholders; a name with no value (a label the group lacks) renders empty. Numbers
        take `decimal` as their decimal mark."""
        if len(self.parts) == 1:
            return self.parts[0]
        out: list[str] = []
        for index, part in enumerate(self.parts):
            if index % 2 == 0:
                out.append(part)
                continue
            value = values.get(part)
            if value is None:
                continue
            out.append(format_number(value, decimal) if isinstance(value, float | int) else str(value))
        return "".join(out)
