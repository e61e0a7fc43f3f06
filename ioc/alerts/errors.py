"""What the alert manager refuses, and why: each error maps to one HTTP status in `ioc.api.alerts`."""

from __future__ import annotations

from ioc.errors import IocError


class AlertNotFound(IocError):
    """No alert (active or kept resolved) has this id (HTTP 404)."""


class AlertConflict(IocError):
    """The alert is not in a state that allows the action, e.g. acknowledging a resolved alert (HTTP 409)."""


class SilenceNotFound(IocError):
    """No silence (pending, active or still listed expired) has this id (HTTP 404)."""


class InvalidSilence(IocError):
    """A silence that cannot be created; the message names the field and what was wrong (HTTP 400)."""


class NotifyError(IocError):
    """A notifier could not deliver. `retryable` says whether the same delivery may succeed later (a 5xx,
    a timeout, a refused connection); the caller, never the notifier, decides whether and when to retry."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
