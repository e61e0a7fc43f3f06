"""The labels of an event (docs/rules.md): `type`, `source`, `area`, `entity` (status), `metric`
(telemetry) and each tag. A built-in label shadows a tag of the same name.

`group_by` picks labels; an event that lacks one is grouped with that label absent, so its group key
holds None there and its labels dict leaves it out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ioc.envelope import AnyEvent

__all__ = ["GroupKey", "KeyFunction", "event_label", "key_function", "key_labels"]

GroupKey = tuple[str | None, ...]
KeyFunction = Callable[[AnyEvent], GroupKey]


def _tag_getter(name: str) -> Callable[[AnyEvent], str | None]:
    def get(event: AnyEvent) -> str | None:
        tags = event.tags
        return tags.get(name) if tags else None
    return get


_BUILTIN: dict[str, Callable[[AnyEvent], str | None]] = {
    "type": lambda event: event.type,
    "source": lambda event: event.source,
    "area": lambda event: event.area,
    # The model's field values: getattr of a field the type lacks is slow in pydantic (AttributeError).
    "entity": lambda event: event.__dict__.get("entity"),
    "metric": lambda event: event.__dict__.get("metric"),
}


def event_label(event: AnyEvent, name: str) -> str | None:
    """The value of label `name` on `event`, or None when the event lacks it."""
    getter = _BUILTIN.get(name)
    return getter(event) if getter is not None else _tag_getter(name)(event)


def key_function(group_by: Sequence[str]) -> KeyFunction:
    """A fast `event -> group key` for one rule's `group_by` (built once per rule)."""
    getters = [_BUILTIN.get(name) or _tag_getter(name) for name in group_by]
    if not getters:
        return lambda event: ()
    if len(getters) == 1:
        only = getters[0]
        return lambda event: (only(event),)
    return lambda event: tuple([get(event) for get in getters])


def key_labels(group_by: Sequence[str], key: GroupKey, static: dict[str, str]) -> dict[str, str]:
    """An alert's labels: the group's present labels plus the rule's static `labels`."""
    labels = {name: value for name, value in zip(group_by, key, strict=True) if value is not None}
    labels.update(static)
    return labels
