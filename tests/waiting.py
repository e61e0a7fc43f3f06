"""Polling for tests: wait until a condition holds instead of sleeping and hoping (the box is slow and shared)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(what: str, probe: Callable[[], T], timeout: float = 10.0, *, every: float = 0.05,
               transient: tuple[type[Exception], ...] = (), explain: Callable[[], object] | None = None) -> T:
    """`probe()`'s first truthy answer, asked every `every` s. After `timeout` s an AssertionError naming
    `what`, the last answer (or the last `transient` error: those count as "not yet", e.g. a server still
    starting) and what `explain()` tells, if given. Any other error of the probe fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        last: object
        try:
            found = probe()
        except transient as error:
            last = error
        else:
            if found:
                return found
            last = found
        # The probe is asked once more after the deadline passed, so a slow last sleep does not fail it.
        if time.monotonic() > deadline:
            detail = f"; {explain()}" if explain is not None else ""
            seen = repr(last)
            seen = seen if len(seen) <= 300 else seen[:300] + "..."
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {seen}){detail}")
        time.sleep(every)
