"""An alert: one episode of a rule group's condition, as operators see it (docs/http-api.md "alert",
docs/rules.md).

An `Alert` is an immutable snapshot; the alert manager replaces it on every change, so a snapshot handed
to a notifier (maybe delivered later from a queue) never changes under it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from ioc.alerts.config import Change
from ioc.rules.updates import AlertState, Severity

__all__ = ["STATE_CHANGES", "Acknowledgement", "Alert", "Change", "rfc3339"]  # Change: declared with the settings naming it

STATE_CHANGES: frozenset[str] = frozenset({"pending", "firing", "resolved"})


def rfc3339(timestamp: float | None) -> str | None:
    """Unix seconds as RFC 3339 in UTC (the shape `Kpi.as_json` uses too), None as None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """Who acknowledged a firing alert, and when (wall-clock Unix seconds)."""

    by: str
    at: float


@dataclass(frozen=True, slots=True)
class Alert:
    """One episode of an alert. `started_at` is when it first became pending (or firing, without `for`),
    `fired_at` when it fired, `resolved_at` when it resolved: event times, Unix seconds. `silenced` is
    true while a silence or an inhibition mutes it (`inhibited` says which, `silenced_by` names the
    silences); these are derived by the manager, and stored as what was last told (`ioc.alerts.manager`)."""

    id: str
    fingerprint: str
    rule: str
    severity: Severity
    state: AlertState
    labels: dict[str, str]
    summary: str
    value: float | None
    started_at: float
    fired_at: float | None = None
    resolved_at: float | None = None
    runbook: str | None = None
    acknowledged: Acknowledgement | None = None
    updated_at: float = 0.0
    silenced_by: tuple[str, ...] = ()
    inhibited_by: str | None = None
    summary_en: str | None = None  # the rule's English summary, when it has one
    silenced: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "silenced", bool(self.silenced_by) or self.inhibited_by is not None)

    @property
    def inhibited(self) -> bool:
        return self.inhibited_by is not None

    @property
    def active(self) -> bool:
        """Pending or firing: what `GET /api/v1/alerts` lists with no `state`."""
        return self.state != "resolved"

    def match_labels(self) -> dict[str, str]:
        """The labels silences and inhibition rules match on: the alert's labels plus `rule` and
        `alertname` (Alertmanager's name for it) and `severity`, unless the labels have their own."""
        return {"rule": self.rule, "alertname": self.rule, "severity": self.severity, **self.labels}

    def as_json(self) -> dict[str, object]:
        """The contract's alert shape (docs/http-api.md), plus `runbook`, `inhibited`, `silenced_by`."""
        acknowledged = self.acknowledged
        return {
            "id": self.id,
            "fingerprint": self.fingerprint,
            "rule": self.rule,
            "severity": self.severity,
            "state": self.state,
            "labels": dict(self.labels),
            "summary": self.summary,
            # Per language (docs/http-api.md): `en` is null when the rule has no English summary.
            "summaries": {"vi": self.summary, "en": self.summary_en},
            "value": self.value,
            "started_at": rfc3339(self.started_at),
            "fired_at": rfc3339(self.fired_at),
            "resolved_at": rfc3339(self.resolved_at),
            "acknowledged": None if acknowledged is None else {"by": acknowledged.by,
                                                               "at": rfc3339(acknowledged.at)},
            "silenced": self.silenced,
            "inhibited": self.inhibited,
            "silenced_by": list(self.silenced_by),
            "runbook": self.runbook,
        }
