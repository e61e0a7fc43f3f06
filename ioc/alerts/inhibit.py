"""Inhibition, as in Alertmanager: while a source alert fires, the target alerts it covers are muted.

A rule has `source_matchers`, `target_matchers` and `equal` (labels whose values must be the same in
source and target). IOC extension `within_area`: the target's `area` label must be the source's area or
one of its descendants in the area registry, so a province-wide `coverage-outage` mutes the `cell-down`
and `coverage-outage` alerts of its communes without one rule per province.

An alert never inhibits itself, and two alerts that could each inhibit the other under one rule do not
(Alertmanager's rule for alerts matching both sides): two communes' outages never mute each other, but a
province's outage does mute its communes' (a commune is within the province, not the other way round).

An inhibited alert is muted exactly like a silenced one (`silenced: true`, plus `inhibited: true`). The
`Inhibitor` is the first `Muter` of the muting stages (`ioc.alerts.muting`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

import structlog

from ioc.alerts.alert import Alert
from ioc.alerts.config import InhibitRuleSettings
from ioc.errors import ConfigError
from ioc.matchers import Matcher, matches_all

log = structlog.get_logger("ioc.alerts.inhibit")


class AreaTree(Protocol):
    """What inhibition needs of the area registry (`ioc.areas.AreaRegistry`)."""

    def is_within(self, code: str, ancestor: str, at: date | None = None) -> bool: ...


@dataclass(frozen=True, slots=True)
class InhibitRule:
    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...] = ()
    within_area: bool = False

    @classmethod
    def from_settings(cls, settings: InhibitRuleSettings) -> InhibitRule:
        return cls(source=tuple(spec.build() for spec in settings.source_matchers),
                   target=tuple(spec.build() for spec in settings.target_matchers),
                   equal=tuple(settings.equal), within_area=settings.within_area)


_Source = tuple[Alert, dict[str, str]]
_MAX_ROLES = 100_000


class Inhibitor:
    """The inhibition rules and the firing alerts that may inhibit others (`set_sources`); a `Muter`.

    Not thread-safe on its own: the `AlertManager` calls it under its lock."""

    def __init__(self, rules: Sequence[InhibitRule], areas: AreaTree | None = None) -> None:
        for index, rule in enumerate(rules):
            if rule.within_area and areas is None:
                problem = f"alerts.inhibit.{index}.within_area: needs the area registry ([areas] path)"
                raise ConfigError([problem])
        self.rules = list(rules)
        self._areas = areas
        # Per rule: firing source alerts by the values of the rule's `equal` labels.
        self._sources: list[dict[tuple[str, ...], list[_Source]]] = [{} for _ in self.rules]
        # Per fingerprint (whose labels never change): the rules it is a source of, and a target of.
        self._roles: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def _roles_of(self, alert: Alert, labels: dict[str, str] | None = None) -> tuple[tuple[int, ...],
                                                                                  tuple[int, ...]]:
        roles = self._roles.get(alert.fingerprint)
        if roles is None:
            labels = labels or alert.match_labels()
            roles = (tuple(i for i, rule in enumerate(self.rules) if matches_all(rule.source, labels)),
                     tuple(i for i, rule in enumerate(self.rules) if matches_all(rule.target, labels)))
            if len(self._roles) >= _MAX_ROLES:
                self._roles.clear()  # bounded: worked out again as needed
            self._roles[alert.fingerprint] = roles
        return roles

    def is_source(self, alert: Alert) -> bool:
        """Whether the alert matches the source side of any rule (its firing may mute others)."""
        return bool(self._roles_of(alert)[0])

    def is_target(self, alert: Alert) -> bool:
        """Whether the alert matches the target side of any rule (it may be inhibited)."""
        return bool(self._roles_of(alert)[1])

    def set_sources(self, alerts: Iterable[Alert]) -> None:
        """The alerts that may inhibit from now on: the firing ones among `alerts` that match a source."""
        sources: list[defaultdict[tuple[str, ...], list[_Source]]] = [defaultdict(list) for _ in self.rules]
        for alert in alerts:
            if alert.state != "firing":
                continue
            source_of, _ = self._roles_of(alert)
            if not source_of:
                continue
            labels = alert.match_labels()
            for index in source_of:
                sources[index][_key(self.rules[index], labels)].append((alert, labels))
        # The earliest fired first (then by fingerprint): `inhibited_by` names the same source on every node
        # whatever order it holds its alerts in, so a muting change gets the same id (`muting_cause`).
        for by_key in sources:
            for found in by_key.values():
                found.sort(key=lambda source: (source[0].fired_at or 0.0, source[0].fingerprint))
        self._sources = [dict(by_key) for by_key in sources]

    def inhibited_by(self, alert: Alert) -> str | None:
        """The fingerprint of a firing alert that inhibits this one, or None."""
        _, target_of = self._roles_of(alert)
        if not target_of:
            return None
        labels = alert.match_labels()
        for index in target_of:
            rule = self.rules[index]
            candidates = self._sources[index].get(_key(rule, labels))
            if not candidates:
                continue
            two_sided = index in self._roles_of(alert)[0]
            area = labels.get("area", "")
            for source, source_labels in candidates:
                if source.fingerprint == alert.fingerprint:
                    continue
                source_area = source_labels.get("area", "")
                if rule.within_area and not self._within(area, source_area):
                    continue
                # When each could inhibit the other, only a source strictly above the target does.
                if two_sided and matches_all(rule.target, source_labels) and (
                        not rule.within_area or self._within(source_area, area)):
                    continue
                return source.fingerprint
        return None

    def muted_by(self, alert: Alert, now: float | None = None) -> tuple[str, ...]:
        """`Muter`: the fingerprint of the alert that inhibits this one (inhibition does not follow
        the clock: `now` is not needed)."""
        found = self.inhibited_by(alert)
        return () if found is None else (found,)

    def mutes(self, alert: Alert, now: float | None = None) -> bool:
        return self.inhibited_by(alert) is not None

    def _within(self, code: str, ancestor: str) -> bool:
        if not code or not ancestor or self._areas is None:
            return False
        try:
            return self._areas.is_within(code, ancestor)
        except Exception as error:  # noqa: BLE001 - an unknown code is "not within", never a crash of the alert path
            log.warning("alerts.area_lookup_failed", code=code, ancestor=ancestor, error=repr(error))
            return False


def _key(rule: InhibitRule, labels: dict[str, str]) -> tuple[str, ...]:
    return tuple(labels.get(name, "") for name in rule.equal)
