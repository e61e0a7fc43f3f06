"""The seam between the rule engine and the alert manager.

The rule engine (`ioc.rules.engine`) knows, per rule and group of labels, whether the condition is pending,
firing or resolved; it reports every change as an `AlertUpdate`. The alert manager (`ioc.alerts`) turns
updates into alerts with ids, episodes, acknowledgements and silences, persists them and notifies.
It lives with the rule engine, which reports them: the alerts depend on the rules, never the reverse.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

Severity: TypeAlias = Literal["info", "warning", "critical"]
AlertState: TypeAlias = Literal["pending", "firing", "resolved"]
SEVERITY_RANK: dict[str, int] = {"critical": 3, "warning": 2, "info": 1}


def fingerprint(rule: str, labels: Mapping[str, str]) -> str:
    """An alert's identity: the rule id plus its group labels (docs/rules.md), as 16 hex digits.

    Stable across restarts and processes (sha256 of a canonical form, never Python's `hash`)."""
    canonical = rule + "\x00" + "\x00".join(f"{key}\x01{labels[key]}" for key in sorted(labels))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class AlertUpdate:
    """One rule group's new state. `at` is the (event) time of the change, Unix seconds; `labels` are
    the group's labels (with `area` when grouped by it) plus the rule's own `labels`; `value` is the
    value the condition was judged on (None for absence). `summary` is the rule's (Vietnamese) summary,
    `summary_en` its English one ("" when the rule has none). `since` is the (event) time the group's
    episode began: the same on every node that saw the same events (the alert id is derived from it)."""

    rule: str
    labels: dict[str, str]
    severity: Severity
    state: AlertState
    summary: str
    value: float | None
    at: float
    runbook: str | None = None
    fingerprint: str = field(default="")
    summary_en: str = ""
    since: float | None = None  # when the episode began (pending, or firing without `for`): its identity

    def __post_init__(self) -> None:
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", fingerprint(self.rule, self.labels))


AlertListener = Callable[[AlertUpdate], None]
