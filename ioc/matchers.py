"""Label matchers, as in Alertmanager: `name`, `value` and `op` (`=`, `!=`, `=~`, `!~`).

Silences and inhibition rules are made of them (and the config declares them), so they sit beside
`ioc.regex` at the bottom of the layers, not in the alerts package. Regular expressions are anchored (the
whole value must match) and compiled once, when the matcher is made, so a bad one is refused with its reason at the door
(an API 400, a config error) and never at matching time. A label an alert does not have matches as the
empty string, as in Alertmanager: `op = "!="` matches it, `name = ""` matches it.

Regular expressions come from operators and meet label values that come from vendors' events, so they are
RE2 (`google-re2`), as in Alertmanager (Go's regexp is RE2 too): matching takes time linear in the value
whatever the pattern, where Python's backtracking `re` took 22 s on `(a+)+$` against 30 characters, with
the GIL held, so the whole daemon froze (docs/operations.md). RE2 has no backreferences and no lookarounds;
such a pattern is refused with a reason that says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from ioc.regex import compile_regex, fullmatches

MatchOp: TypeAlias = Literal["=", "!=", "=~", "!~"]
OPS: tuple[MatchOp, ...] = ("=", "!=", "=~", "!~")
MAX_VALUE = 1024  # characters in a matcher's value (a regex longer than this is a mistake)

_TEXT_FORM = re.compile(r"^\s*([^\s=!~\"]+)\s*(=~|!~|!=|=)\s*(.*?)\s*$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label matcher. Build it with `Matcher.create` (validates and compiles) or `parse_matcher`."""

    name: str
    value: str
    op: MatchOp = "="
    _regex: Any = field(default=None, compare=False, repr=False)  # an RE2 pattern, for =~ and !~

    @classmethod
    def create(cls, name: str, value: str, op: str = "=") -> Matcher:
        """A matcher, or ValueError naming what is wrong (`op`, an empty `name`, a bad regex)."""
        if op not in OPS:
            raise ValueError(f"op {op!r} is not one of {', '.join(OPS)}")
        if not name:
            raise ValueError("name: a matcher needs a label name")
        if len(value) > MAX_VALUE:
            raise ValueError(f"value: longer than {MAX_VALUE} characters")
        regex = None
        if op in ("=~", "!~"):
            try:
                regex = compile_regex(value)
            except ValueError as error:
                raise ValueError(f"value: {error}") from None
        return cls(name, value, op, regex)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether the label set satisfies this matcher (a missing label is the empty string)."""
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self._regex is not None
        found = fullmatches(self._regex, actual)
        return found if self.op == "=~" else not found

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "value": self.value, "op": self.op}

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{self.value}"'


def matches_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    """Every matcher holds (an empty list matches everything)."""
    return all(matcher.matches(labels) for matcher in matchers)


def parse_matcher(text: str) -> Matcher:
    """Alertmanager's text form: `rule = coverage-outage`, `severity=~"critical|warning"`, `area!=""`.

    The value may be in double quotes (then `\\"` and `\\\\` are escapes); ValueError with the reason."""
    match = _TEXT_FORM.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a matcher such as 'rule = cell-down' or "
                         "'severity =~ \"warning|critical\"'")
    name, op, value = match.groups()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = re.sub(r'\\(["\\])', r"\1", value[1:-1])
    return Matcher.create(name, value, op)


class MatcherSpec(BaseModel):
    """A matcher as JSON or TOML: `{"name": "area", "value": "22723", "op": "="}` (`op` defaults to `=`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, Field(min_length=1, max_length=256)]
    value: Annotated[str, Field(max_length=MAX_VALUE)]
    op: MatchOp = "="

    @model_validator(mode="after")
    def _compiles(self) -> MatcherSpec:
        self.build()  # a bad regex is refused while validating, located at this matcher
        return self

    def build(self) -> Matcher:
        return Matcher.create(self.name, self.value, self.op)


def _spec_from_text(value: object) -> object:
    if isinstance(value, str):
        parsed = parse_matcher(value)
        return {"name": parsed.name, "value": parsed.value, "op": parsed.op}
    return value


MatcherInput = Annotated[MatcherSpec, BeforeValidator(_spec_from_text)]
"""A matcher in config: the text form (`"rule = cell-down"`) or the object form."""

