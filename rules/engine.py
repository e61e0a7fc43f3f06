"""The rule engine: events and the passing of time in, alert state changes (`AlertUpdate`) out.

Time is event time (docs/rules.md): the engine's clock is the latest of the event times it has seen and
the times given to `advance` (the daemon calls it with the wall clock, so absences and timers fire when
no event comes); it never moves backwards. Before an event is judged the clock is advanced to its time,
so every timer due before it (a `for` that ran out, a window sample that expired, an absence deadline)
has been dealt with, at the time it was due: a change's `at` is when it happened, not when it was seen.

Timers are one heap of (due time, group) entries. A group has at most one live entry (`Group.timer`);
a later deadline never pushes a new entry (the earlier one fires, finds nothing to do and reschedules),
so the heap stays about as large as the number of groups with something pending.

A rule that raises is counted in `ioc_rule_errors_total{rule}` and logged once per episode
(`rules.evaluation_failed`); the other rules go on. A listener (`on_change`) that raises is logged
(`rules.listener_failed`) and the engine goes on.

Across a restart: the state saved by `dump_state` (every 30 s and at a clean stop) brings back each kind's
data (window samples, entities' states, when a series was last seen) and the groups' timing; then
`adopt` makes every group's phase the one of the alert store, which is written with every change and so
is the truth after a crash: a group the store has firing (or pending) is firing (pending) since the
stored times, with its condition holding; any other group is inactive with its condition not holding
(the hysteresis latch and `keep_firing_for` start afresh). A stored alert of a rule no longer loaded (or
of a group the rule can no longer have) is resolved, as a reload that removes the rule does.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import structlog
from ioc.rules import timing
from ioc.rules.index import RuleIndex
from ioc.rules.kinds import Context, Kind, make_kind
from ioc.rules.labels import GroupKey, key_function, key_labels
from ioc.rules.spec import RuleBase, RuleSet
from ioc.rules.state import StateError, StoredAlert, align, encode_groups, parse_groups, snapshot_groups
from ioc.rules.timing import Change, Group
from ioc.rules.updates import AlertListener, AlertUpdate, fingerprint
from prometheus_client.core import Metric

from ioc.envelope import AnyEvent
from ioc.metrics import MetricSource, counter, gauge

if TYPE_CHECKING:
    from ioc.areas import AreaRegistry

__all__ = ["MAX_GROUPS", "RuleEngine", "StateError", "StoredAlert"]  # the last two: from ioc.rules.state

log = structlog.get_logger("rules.engine")

MAX_GROUPS = 100_000  # per rule: label sets beyond this are not tracked (counted as dropped)


class _Runtime:
    """One loaded rule: its evaluator, its groups and its bookkeeping."""

    __slots__ = ("context", "digest", "failing", "fingerprints", "groups", "key_of", "kind", "rule", "template",
                 "template_en")

    def __init__(self, rule: RuleBase, areas: AreaRegistry | None, started_at: float) -> None:
        self.rule = rule
        self.context = Context(areas, started_at)
        self.kind: Kind[Any] = make_kind(rule, self.context)
        self.digest = rule.digest()
        self.groups: dict[GroupKey, Group] = {}
        self.key_of = key_function(rule.group_by)
        self.template = rule.template()
        self.template_en = rule.template_en()
        self.failing = False
        self.fingerprints: dict[GroupKey, str] = {}  # computed once per group (sha256 costs ~10 us)

    def fingerprint(self, group: Group) -> str:
        found = self.fingerprints.get(group.key)
        if found is None:
            found = self.fingerprints[group.key] = fingerprint(self.rule.id, group.labels)
        return found

    def group(self, key: GroupKey) -> Group | None:
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= MAX_GROUPS:
                self.context.dropped += 1
                return None
            group = Group(key, key_labels(self.rule.group_by, key, self.rule.labels), data=self.kind.new_data())
            self.groups[key] = group
        return group


class RuleEngine:
    """Evaluates a RuleSet over events on event time; reports every alert state change to `on_change`.

    Thread-safe: `observe`, `advance`, `replace_rules`, `active`, `dump_state` and `load_state` may be
    called from any thread; `on_change` is called in the caller's thread, in order, with the lock held
    (so a listener may read `active()` but must not block for long)."""

    def __init__(self, rules: RuleSet, *, areas: AreaRegistry | None, on_change: AlertListener,
                 started_at: float) -> None:
        self._areas = areas
        self._on_change = on_change
        self._started_at = started_at
        self._lock = threading.RLock()
        self._now = -math.inf
        self._heap: list[tuple[float, int, _Runtime, Group]] = []
        self._sequence = itertools.count()
        self._runtimes: dict[str, _Runtime] = {}
        self._index: RuleIndex[_Runtime] = RuleIndex([], areas)
        self._evaluations: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._dropped: dict[str, int] = {}
        self._listener_failing = False
        with self._lock:
            self._install(rules)

    # --- the public surface ------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """The engine's clock (Unix seconds; -inf before the first event or `advance`)."""
        return self._now

    def observe(self, event: AnyEvent) -> None:
        """Judge `event` by every rule that matches it (after advancing the clock to its time)."""
        time = event.time.timestamp()
        with self._lock:
            self._advance(time)
            now = self._now
            for runtime in self._index.match(event):
                self._evaluations[runtime.rule.id] += 1
                try:
                    group = runtime.group(runtime.key_of(event))
                    if group is None:
                        continue
                    judgement = runtime.kind.observe(group, event, time, now)
                    changes = self._judge(runtime, group, judgement, now, time)
                    self._schedule(runtime, group)
                except Exception as error:  # noqa: BLE001  # one rule's bug must not cost the others their events
                    self._failed(runtime, error)
                    continue
                runtime.failing = False
                self._report(runtime, group, changes)

    def advance(self, now: float) -> None:
        """The clock reached `now` (Unix seconds): run every timer due by then. Earlier times are ignored."""
        with self._lock:
            self._advance(now)

    def replace_rules(self, rules: RuleSet) -> None:
        """Load a new RuleSet (SIGHUP). Rules whose definition is unchanged keep their state; the alerts
        of removed or changed rules are resolved (a changed rule starts afresh, like a new one)."""
        with self._lock:
            old = self._runtimes
            kept = self._install(rules)
            at = self._clock()
            for rule_id, runtime in old.items():
                if self._runtimes.get(rule_id) is runtime:
                    continue
                for group in runtime.groups.values():
                    if group.active:
                        group.phase = "inactive"
                        self._emit(runtime, group, "resolved", at)
            log.info("rules.replaced", rules=len(self._runtimes), kept=kept,
                     removed=sum(1 for rule_id in old if rule_id not in self._runtimes))

    def still(self) -> AbstractContextManager[Any]:
        """Hold the engine still: no event or timer is judged, and no change told, until the block ends."""
        return self._lock

    def active(self) -> list[AlertUpdate]:
        """The current pending and firing alerts (`at` = when they became pending, or fired)."""
        with self._lock:
            alerts = []
            for runtime in self._runtimes.values():
                for group in runtime.groups.values():
                    if group.phase == "pending" and group.since is not None:
                        alerts.append(self._update(runtime, group, "pending", group.since))
                    elif group.phase == "firing" and group.fired_at is not None:
                        alerts.append(self._update(runtime, group, "firing", group.fired_at))
            return alerts

    def dump_state(self) -> bytes:
        """Every rule's groups as JSON, to survive a restart (`load_state`). Copied under the lock, encoded
        after it (the daemon saves it every 30 s from another thread: the evaluation goes on meanwhile)."""
        with self._lock:
            snapshot = snapshot_groups(self._runtimes, self._now)
        return encode_groups(snapshot)

    def load_state(self, data: bytes) -> None:
        """Restore what `dump_state` saved, for the rules whose definition is unchanged; the rest start
        afresh. Raises StateError (and changes nothing) when `data` is not such a dump."""
        with self._lock:
            self._load_state(data)

    def _load_state(self, data: bytes) -> None:
        restored, saved_now = parse_groups(data, self._runtimes)
        for runtime, group in restored:
            runtime.groups[group.key] = group
            self._schedule(runtime, group)
        if saved_now is not None and saved_now > self._now:
            self._now = saved_now
        log.info("rules.state_loaded", groups=len(restored))

    def adopt(self, alerts: Sequence[StoredAlert]) -> None:
        """Make every group's phase that of the alert store's active `alerts` (pending and firing; see the
        module doc). Called at start-up after `load_state`; reports nothing for the groups it aligns, and
        a `resolved` for each alert no loaded rule can hold."""
        with self._lock:
            stored = {alert.fingerprint: alert for alert in alerts}
            aligned = reset = 0
            for runtime in self._runtimes.values():
                for group in runtime.groups.values():
                    if group.active and runtime.fingerprint(group) not in stored:
                        group.phase, group.holds = "inactive", False
                        group.since = group.fired_at = group.cleared_at = None
                        self._schedule(runtime, group)  # e.g. an absence's deadline, watched again
                        reset += 1
            orphans: list[StoredAlert] = []
            for alert in stored.values():
                owner = self._runtimes.get(alert.rule)
                held: Group | None = None
                if owner is not None and alert.state in ("pending", "firing"):
                    key = tuple(alert.labels.get(name) for name in owner.rule.group_by)
                    if key_labels(owner.rule.group_by, key, owner.rule.labels) == alert.labels:
                        held = owner.group(key)
                if owner is None or held is None:
                    orphans.append(alert)
                    continue
                if align(held, alert):
                    aligned += 1
                self._schedule(owner, held)
            at = self._started_at
            for alert in orphans:
                self._on_change_safe(AlertUpdate(rule=alert.rule, labels=dict(alert.labels),
                                                 severity=alert.severity, state="resolved",
                                                 summary=alert.summary, value=alert.value, at=at,
                                                 runbook=alert.runbook, fingerprint=alert.fingerprint))
            log.info("rules.alerts_adopted", alerts=len(stored) - len(orphans), aligned=aligned, reset=reset,
                     resolved=len(orphans))

    def metrics(self) -> MetricSource:
        """`ioc_rule_evaluations_total{rule}`, `ioc_rule_errors_total{rule}`, `ioc_rules_loaded`,
        `ioc_rule_samples_dropped_total{rule}` (samples, entities or groups refused at their bound)."""

        def collect() -> Iterable[Metric]:
            with self._lock:
                evaluations = {(rule,): count for rule, count in self._evaluations.items()}
                errors = {(rule,): count for rule, count in self._errors.items()}
                dropped = dict(self._dropped)
                for rule_id, runtime in self._runtimes.items():
                    dropped[rule_id] = dropped.get(rule_id, 0) + runtime.context.dropped
                loaded = len(self._runtimes)
            yield counter("ioc_rule_evaluations", "Times a rule judged an event or the passing of time.",
                          ("rule",), evaluations)
            yield counter("ioc_rule_errors", "Evaluations that raised.", ("rule",), errors)
            yield counter("ioc_rule_samples_dropped", "Samples, entities or groups a rule refused at its bound.",
                          ("rule",), {(rule,): count for rule, count in dropped.items()})
            yield gauge("ioc_rules_loaded", "Rules loaded.", (), {(): loaded})

        return collect

    # --- inside ------------------------------------------------------------------------------------

    def _clock(self) -> float:
        return self._now if math.isfinite(self._now) else self._started_at

    def _install(self, rules: RuleSet) -> int:
        """Make `rules` the loaded rules, keeping the runtimes of unchanged ones; how many were kept."""
        started_at = max(self._started_at, self._now)
        runtimes: dict[str, _Runtime] = {}
        kept = 0
        fresh = []
        for rule in rules:
            runtime = self._runtimes.get(rule.id)
            if runtime is not None and runtime.digest == rule.digest():
                kept += 1
            else:
                runtime = _Runtime(rule, self._areas, started_at)
                fresh.append(runtime)
                if rule.id in self._runtimes:  # a changed rule: keep the count of what the old one dropped
                    old = self._runtimes[rule.id]
                    self._dropped[rule.id] = self._dropped.get(rule.id, 0) + old.context.dropped
            runtimes[rule.id] = runtime
            self._evaluations.setdefault(rule.id, 0)
            self._errors.setdefault(rule.id, 0)
        self._runtimes = runtimes
        self._index = RuleIndex([(runtime.rule, runtime) for runtime in runtimes.values()], self._areas)
        for runtime in fresh:
            for labels in runtime.kind.seeds():
                group = runtime.group(tuple(labels.get(name) for name in runtime.rule.group_by))
                if group is not None:
                    self._schedule(runtime, group)
        return kept

    def _advance(self, now: float) -> None:
        heap = self._heap
        limit = max(now, self._now)
        while heap and heap[0][0] <= limit:
            due, _, runtime, group = heapq.heappop(heap)
            if group.timer != due or self._runtimes.get(runtime.rule.id) is not runtime or \
                    runtime.groups.get(group.key) is not group:
                continue  # superseded by an earlier timer, the rule was replaced, or the group restored
            group.timer = None
            self._now = max(self._now, due)
            self._evaluations[runtime.rule.id] += 1
            try:
                judgement = runtime.kind.tick(group, self._now)
                changes = self._judge(runtime, group, judgement, self._now)
                self._schedule(runtime, group)
            except Exception as error:  # noqa: BLE001  # as in observe: isolated and counted
                self._failed(runtime, error)
                continue
            runtime.failing = False
            self._report(runtime, group, changes)
        self._now = max(self._now, now)

    def _judge(self, runtime: _Runtime, group: Group, judgement: tuple[bool, float | None] | None,
               now: float, at: float | None = None) -> list[Change]:
        """Apply a judgement made on an event of time `at` (default `now`). An event older than the
        engine's clock (a late source, a replay, a vendor clock behind another's) is judged at its own
        time — `for` counts from when its condition began (docs/rules.md: event time) — and the timers
        then catch up to `now`."""
        rule = runtime.rule
        if judgement is None:
            return timing.tick(group, now, rule.for_, rule.keep_firing_for)
        at = now if at is None else min(at, now)
        changes = timing.judge(group, judgement[0], judgement[1], at, rule.for_, rule.keep_firing_for)
        if at < now:
            changes += timing.tick(group, now, rule.for_, rule.keep_firing_for)
        return changes

    def _schedule(self, runtime: _Runtime, group: Group) -> None:
        rule = runtime.rule
        due = timing.due(group, rule.for_, rule.keep_firing_for)
        kind_due = runtime.kind.next_due(group)
        if kind_due is not None and (due is None or kind_due < due):
            due = kind_due
        if due is None or (group.timer is not None and group.timer <= due):
            return
        group.timer = due
        heapq.heappush(self._heap, (due, next(self._sequence), runtime, group))

    def _failed(self, runtime: _Runtime, error: Exception) -> None:
        rule_id = runtime.rule.id
        self._errors[rule_id] += 1
        if not runtime.failing:
            runtime.failing = True
            log.error("rules.evaluation_failed", rule=rule_id, error=f"{type(error).__name__}: {error}",
                      exc_info=error)

    def _report(self, runtime: _Runtime, group: Group, changes: list[Change]) -> None:
        for state, at in changes:
            self._emit(runtime, group, state, at)

    def _update(self, runtime: _Runtime, group: Group, state: str, at: float) -> AlertUpdate:
        rule = runtime.rule
        values: dict[str, str | float | None] = dict(group.labels)
        values["value"] = group.value
        values["threshold"] = group.threshold
        area = group.labels.get("area")
        if area is not None:
            values["area_name"] = runtime.context.area_name(area, at)
        return AlertUpdate(rule=rule.id, labels=dict(group.labels), severity=rule.severity,
                           state=state,  # type: ignore[arg-type]
                           # Vietnamese writes a decimal comma, English a point (docs/rules.md)
                           summary=runtime.template.render(values, decimal=","),
                           summary_en=runtime.template_en.render(values) if runtime.template_en else "",
                           value=group.value, at=at, since=group.since,
                           runbook=rule.runbook, fingerprint=runtime.fingerprint(group))

    def _emit(self, runtime: _Runtime, group: Group, state: str, at: float) -> None:
        self._on_change_safe(self._update(runtime, group, state, at))

    def _on_change_safe(self, update: AlertUpdate) -> None:
        try:
            self._on_change(update)
        except Exception as error:  # the listener's bug must not stop the rules
            if not self._listener_failing:
                log.error("rules.listener_failed", rule=update.rule, error=f"{type(error).__name__}: {error}",
                          exc_info=error)
            self._listener_failing = True
        else:
            self._listener_failing = False
