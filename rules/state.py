"""The rule engine's state across a restart: every rule's groups as JSON (`dump_groups` /
`parse_groups`), and the alert store's view of them (`align`). See `ioc.rules.engine`'s module doc for
when each is used: the dump every 30 s and at a clean stop, the store (written with every change) as the
truth after a crash."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol, TypeAlias

import orjson
from ioc.rules.labels import key_labels
from ioc.rules.timing import Group

from ioc.errors import IocError

STATE_VERSION = 1


class Runtime(Protocol):
    """What the state needs of a loaded rule (the engine's `_Runtime`)."""

    rule: Any
    digest: str
    kind: Any
    groups: dict[Any, Group]


class StateError(IocError):
    """Saved engine state that cannot be read (the caller starts with fresh state)."""


class StoredAlert(Protocol):
    """What `adopt` reads of an active alert of the store (`ioc.alerts.alert.Alert` is one)."""

    @property
    def fingerprint(self) -> str: ...
    @property
    def rule(self) -> str: ...
    @property
    def labels(self) -> dict[str, str]: ...
    @property
    def severity(self) -> Any: ...
    @property
    def state(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def value(self) -> float | None: ...
    @property
    def started_at(self) -> float: ...
    @property
    def fired_at(self) -> float | None: ...
    @property
    def runbook(self) -> str | None: ...


def dump_groups(runtimes: Mapping[str, Runtime], now: float) -> bytes:
    """Every rule's groups and the clock as JSON."""
    return encode_groups(snapshot_groups(runtimes, now))


Snapshot: TypeAlias = tuple[float, list[tuple[str, str, Any, list[tuple[Any, ...]]]]]


def snapshot_groups(runtimes: Mapping[str, Runtime], now: float) -> Snapshot:
    """What `dump_groups` saves, copied (not encoded) while the engine's lock is held: the encoding, which
    grows with the windows' samples, then runs without it (`encode_groups`), so the periodic save does not
    stall the evaluation thread (300k samples of a 1 h window: 22 ms copied under the lock, then 0.8 s
    encoding, which all ran under it before; a loaded 2-core box)."""
    rules = []
    for rule_id, runtime in runtimes.items():
        snapshot = runtime.kind.snapshot
        groups = [(group.key, group.phase, group.holds, group.since, group.fired_at, group.cleared_at, group.value,
                   group.threshold, snapshot(group.data)) for group in runtime.groups.values()]
        rules.append((rule_id, runtime.digest, runtime.kind, groups))
    return now, rules


def encode_groups(snapshot: Snapshot) -> bytes:
    """The JSON of a `snapshot_groups` copy."""
    now, copied = snapshot
    rules = {}
    for rule_id, digest, kind, groups in copied:
        encode = kind.encode
        rules[rule_id] = {"digest": digest, "groups": [{
            "key": list(key), "phase": phase, "holds": holds, "since": since, "fired_at": fired_at,
            "cleared_at": cleared_at, "value": value, "threshold": threshold, "data": encode(data),
        } for key, phase, holds, since, fired_at, cleared_at, value, threshold, data in groups]}
    return orjson.dumps({"version": STATE_VERSION, "now": now if math.isfinite(now) else None, "rules": rules})


def parse_groups(data: bytes, runtimes: Mapping[str, Runtime]) -> tuple[list[tuple[Any, Group]], float | None]:
    """The groups `dump_groups` saved, for the rules whose definition is unchanged (the rest start afresh),
    and the saved clock. Raises StateError when `data` is not such a dump; builds nothing until it is read
    whole, so a bad dump changes nothing."""
    try:
        state = orjson.loads(data)
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a rule engine state of version {STATE_VERSION}")
        restored = []
        for rule_id, saved in state["rules"].items():
            runtime = runtimes.get(rule_id)
            if runtime is None or saved["digest"] != runtime.digest:
                continue
            for item in saved["groups"]:
                key = tuple(item["key"])
                if len(key) != len(runtime.rule.group_by) or item["phase"] not in ("inactive", "pending", "firing"):
                    raise ValueError(f"rule {rule_id}: a group does not fit the rule")
                group = Group(key, key_labels(runtime.rule.group_by, key, runtime.rule.labels),
                              phase=item["phase"], holds=bool(item["holds"]), since=item["since"],
                              fired_at=item["fired_at"], cleared_at=item["cleared_at"], value=item["value"],
                              threshold=item["threshold"], data=runtime.kind.load(item["data"]))
                restored.append((runtime, group))
        saved_now = state.get("now")
    except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise StateError(f"rule state: {error}") from None
    return restored, float(saved_now) if isinstance(saved_now, float | int) else None


def align(group: Group, alert: StoredAlert) -> bool:
    """Give `group` the stored alert's phase and times (unless it is already in that very episode, whose
    finer timing, e.g. `keep_firing_for`, it keeps); True when it changed."""
    if alert.state == "firing":
        if group.phase == "firing" and group.fired_at == alert.fired_at:
            return False
        group.phase, group.since, group.fired_at = "firing", alert.started_at, alert.fired_at
    else:
        if group.phase == "pending" and group.since == alert.started_at:
            return False
        group.phase, group.since, group.fired_at = "pending", alert.started_at, None
    group.holds, group.cleared_at = True, None
    if alert.value is not None:
        group.value = alert.value
    return True
