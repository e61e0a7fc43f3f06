"""Regular expressions written by operators (silence and inhibition matchers, rule files), matched in RE2.

Operators' patterns meet values that come from vendors' events, so they are RE2 (`google-re2`), as in
Alertmanager and Prometheus (Go's regexp is RE2 too): matching takes time linear in the value whatever the
pattern, where Python's backtracking `re` took 22 s on `(a+)+$` against 30 characters, with the GIL held,
so the whole daemon froze (docs/operations.md). RE2 has no backreferences and no lookarounds; such a pattern
is refused with a reason that says so.
"""

from __future__ import annotations

import re
from typing import Any

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

MAX_PATTERN = 1024  # characters in an operator's regex (longer is a mistake, or an attack)

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is refused with its reason; RE2 must not also print it
_RE2_OPTIONS.never_capture = True  # only "does it match" is asked: no groups to track
# What RE2 says about the Perl constructs it leaves out on purpose (they need backtracking).
_BACKREFERENCE = re.compile(r"^invalid escape sequence: \\\d")
_LOOKAROUND = ("invalid perl operator: (?=", "invalid perl operator: (?!", "invalid perl operator: (?<")


def compile_regex(pattern: str) -> Any:
    """`pattern` (RE2 syntax) compiled to match a whole value, as Alertmanager does (`^(?:pattern)$`), or
    ValueError with RE2's reason. The pattern must also compile on its own, so `a)|(b` cannot escape the
    anchors. Match with `.fullmatch(value)`: linear in the value's length."""
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"longer than {MAX_PATTERN} characters")
    try:
        re2.compile(pattern, _RE2_OPTIONS)
        return re2.compile(f"^(?:{pattern})$", _RE2_OPTIONS)
    except re2.error as error:
        reason = error.args[0] if error.args else "invalid"
        reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        if _BACKREFERENCE.match(reason):
            reason += " (RE2 syntax has no backreferences)"
        elif reason.startswith(_LOOKAROUND):
            reason += " (RE2 syntax has no lookarounds)"
        raise ValueError(f"{_shown(pattern)} is not a valid regular expression (RE2 syntax): "
                         f"{reason}") from None
    except UnicodeEncodeError:  # a lone surrogate: not text RE2 (or JSON) can hold
        raise ValueError(f"{_shown(pattern)} is not valid Unicode text") from None


def _shown(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def fullmatches(regex: Any, value: str) -> bool:
    """Whether a pattern of `compile_regex` matches the whole `value`. A lone surrogate (which no JSON
    decoder of ours lets in, but a Python caller might) is matched as U+FFFD: RE2 needs UTF-8."""
    try:
        return regex.fullmatch(value) is not None
    except UnicodeEncodeError:
        return regex.fullmatch(value.encode("utf-8", "replace").decode()) is not None
