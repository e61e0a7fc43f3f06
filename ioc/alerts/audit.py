"""The audit log's entry: who changed what, when (every operator action on alerts and silences)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ioc.alerts.alert import rfc3339


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One operator action: `action` is `alert.ack`, `alert.unack`, `silence.create` or `silence.expire`;
    `target` the alert or silence id; `detail` what else a reader needs (rule, fingerprint, matchers)."""

    at: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"at": rfc3339(self.at), "actor": self.actor, "action": self.action, "target": self.target,
                "detail": self.detail}
