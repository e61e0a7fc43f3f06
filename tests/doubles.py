"""Test doubles shared by several modules: a clock the test moves, a notifier that records what it is told."""

from __future__ import annotations

from collections.abc import Callable

from ioc.alerts.alert import Alert, Change
from ioc.alerts.outbox import Notification


class SettableClock:
    """A wall clock (Unix seconds) that stands still until the test sets `now`."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingHook:
    """A durable notifier that wants every change and keeps each notification it gets, with its ids.
    `hold`: it never settles (a delivery under way when its node dies: the row stays in the outbox)."""

    def __init__(self, *, hold: bool = False) -> None:
        self.name = "hook"
        self.hold = hold
        self.got: list[Notification] = []

    def wants(self, alert: Alert, change: Change) -> bool:
        return True

    def deliver(self, note: Notification, settle: Callable[[int], None]) -> None:
        self.got.append(note)
        if not self.hold:
            settle(note.seq)
