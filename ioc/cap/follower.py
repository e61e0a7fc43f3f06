"""CAP on a follower (docs/operations.md, "A cluster: high availability")."""

from __future__ import annotations

from collections.abc import Callable

from ioc.alerts.alert import Alert, Change
from ioc.cap.publisher import CapPublisher


class FollowerCap:
    """CONTRACT §8: every node serves the CAP feed, which is node-local. The leader's CAP publisher is told
    as a durable notifier; on a follower (told only of what it hears from the store) this plain notifier
    tells it. A message told twice is published once (`CapPublisher`)."""

    name = "cap-follower"

    def __init__(self, cap: CapPublisher, leading: Callable[[], bool]) -> None:
        self.cap = cap
        self.leading = leading

    def notify(self, alert: Alert, change: Change) -> None:
        if not self.leading():
            self.cap.notify(alert, change)
