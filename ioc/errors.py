"""The daemon's exception hierarchy: callers catch these, never a library's."""

from __future__ import annotations


class IocError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(IocError):
    """The configuration is invalid; `problems` are lines of `file:line: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SinkError(IocError):
    """A sink could not write. `retryable` says whether the same points may succeed later;
    `retry_after` is the server's hint in seconds (HTTP Retry-After), if it gave one."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


class SinkFull(IocError):
    """A sink's queue and spool are at their bound and its policy is not to wait."""
