"""The topics of docs/transports.md and docs/operations.md as the MQTT connector uses them."""

from __future__ import annotations

EVENTS_PREFIX = "ioc/v1/events/"
EVENTS_FILTER = "ioc/v1/events/#"
# The default subscription before docs/operations.md "Topics"; a session resumed with both it and
# `ioc/v1/events/#` would get every event twice, so it is unsubscribed (see MqttSession).
LEGACY_FILTER = "ioc/v1/events/+"
DEAD_LETTER_PREFIX = "ioc/v1/deadletter/"


def topic_source(topic: str) -> str:
    """The `{source}` of an event topic: the level after `ioc/v1/events/` (a vendor may also publish below
    it, `ioc/v1/events/{source}/...`, as the generated ACL allows); for a topic of another shape (a custom
    subscription) its last level. The pipeline rejects an event whose `source` differs from it."""
    if topic.startswith(EVENTS_PREFIX):
        return topic[len(EVENTS_PREFIX):].partition("/")[0]
    return topic.rpartition("/")[2]
