"""HTTP poll connector: service health URLs probed on a schedule, each probe a `status` event."""

from ioc.connectors.http_poll.poller import HttpPoller, Probe, probe, status_event

__all__ = ["HttpPoller", "Probe", "probe", "status_event"]
