"""The store's one exception: what either backend raises when a statement, a commit or a connection fails."""

from __future__ import annotations

from ioc.errors import IocError


class StoreError(IocError):
    """A store operation failed (the driver's error is the cause): a locked or full SQLite file, PostgreSQL
    unreachable or restarting, a constraint. The caller decides: retry later, or refuse the change."""
