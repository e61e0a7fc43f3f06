"""`ioc sim verify`: after a play, did exactly the scenario's expected alerts fire (and resolve)?

The daemon's API is read before the play (alerts already there are not this play's) and polled after
it: `GET /api/v1/alerts` (the active ones) and `?state=resolved`. An alert counts once it has fired
(`fired_at` set). Each expectation must be met by an alert of its rule whose labels include the
expected ones, fired at most `by` after the play's start (event time), resolved by `resolved_by` when
that is given, and `count` of them when that is given; every other alert that fired must be `allow`ed.
The verdict is a list of readable differences: missing, late, not resolved, unexpected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from ioc.simulators.play import Plan, describe_offset
from ioc.simulators.scenario import Expected, Scenario

__all__ = ["Verdict", "fetch_alerts", "judge", "wait_for_verdict"]

TOLERANCE = 1.0  # seconds: event times are kept to the millisecond, alerts' times to the microsecond


@dataclass
class Verdict:
    """The differences found (empty: the daemon did exactly what the scenario expects)."""

    problems: list[str] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)  # what was as expected, for the report
    skipped: list[str] = field(default_factory=list)  # live-only expectations of a replay

    @property
    def ok(self) -> bool:
        return not self.problems


def fetch_alerts(api: str, client: httpx.Client) -> dict[str, dict[str, Any]]:
    """Every alert the daemon lists (active and resolved), by id."""
    found: dict[str, dict[str, Any]] = {}
    for params in ({"limit": "10000"}, {"state": "resolved", "limit": "10000"}):
        response = client.get(f"{api.rstrip('/')}/api/v1/alerts", params=params)
        response.raise_for_status()
        for alert in response.json():
            found[alert["id"]] = alert
    return found


def _time(value: Any) -> float | None:
    return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else None


def _show(rule: str, labels: dict[str, str]) -> str:
    shown = ", ".join(f"{key}={value}" for key, value in sorted(labels.items()))
    return f"{rule} {{{shown}}}"


def judge(scenario: Scenario, how: Plan, alerts: dict[str, dict[str, Any]], before: set[str]) -> Verdict:
    """Compare the alerts of this play (not in `before`, fired) with the scenario's expectations."""
    verdict = Verdict()
    fired = [alert for alert_id, alert in sorted(alerts.items()) if alert_id not in before
             and alert.get("fired_at")]
    expectations: list[Expected] = []
    for expected in scenario.expect:
        if expected.live_only and not how.live:
            verdict.skipped.append(f"{_show(expected.rule, expected.labels)} (live only: not judged in a replay)")
        else:
            expectations.append(expected)

    def offset(alert: dict[str, Any], key: str) -> float | None:
        moment = _time(alert.get(key))
        return None if moment is None else moment - how.start

    for expected in expectations:
        name = _show(expected.rule, expected.labels)
        matched = [a for a in fired if expected.matches(a["rule"], a.get("labels") or {})]
        if not matched:
            verdict.problems.append(f"missing: {name} by {describe_offset(expected.by)}")
            continue
        on_time = [a for a in matched if (offset(a, "fired_at") or 0) <= expected.by + TOLERANCE]
        if not on_time:
            first = min(offset(a, "fired_at") or 0 for a in matched)
            verdict.problems.append(f"late: {name} fired at {describe_offset(first)}, expected by "
                                    f"{describe_offset(expected.by)}")
            continue
        if expected.count is not None and len(matched) != expected.count:
            verdict.problems.append(f"count: {name}: {len(matched)} fired, expected {expected.count}")
        if expected.resolved_by is not None:
            for alert in matched:
                resolved = offset(alert, "resolved_at")
                shown = _show(alert["rule"], alert.get("labels") or {})
                if resolved is None:
                    verdict.problems.append(f"not resolved: {shown} by {describe_offset(expected.resolved_by)} "
                                            f"(still {alert.get('state')})")
                elif resolved > expected.resolved_by + TOLERANCE:
                    verdict.problems.append(f"resolved late: {shown} at {describe_offset(resolved)}, expected "
                                            f"by {describe_offset(expected.resolved_by)}")
        verdict.matched += [f"{_show(a['rule'], a.get('labels') or {})} fired at "
                            f"{describe_offset(offset(a, 'fired_at') or 0)}" for a in matched]
    tolerated = [*scenario.expect, *scenario.allow]
    for alert in fired:
        labels = alert.get("labels") or {}
        if not any(item.matches(alert["rule"], labels) for item in tolerated):
            verdict.problems.append(f"unexpected: {_show(alert['rule'], labels)} fired at "
                                    f"{describe_offset(offset(alert, 'fired_at') or 0)}")
    return verdict


def wait_for_verdict(scenario: Scenario, how: Plan, api: str, before: set[str], *, timeout: float = 60.0,
                     settle: float = 3.0, client: httpx.Client | None = None,
                     clock: Callable[[], float] = time.monotonic) -> Verdict:
    """Poll the daemon until the expectations are met (then `settle` more seconds, so a late unexpected
    alert is seen) or `timeout` passes; the last verdict."""
    own = client is None
    client = client or httpx.Client(timeout=10.0)
    try:
        deadline = clock() + timeout
        verdict = judge(scenario, how, fetch_alerts(api, client), before)
        while clock() < deadline:
            if not [p for p in verdict.problems if not p.startswith("unexpected:")]:
                time.sleep(settle)
                return judge(scenario, how, fetch_alerts(api, client), before)
            time.sleep(0.5)
            verdict = judge(scenario, how, fetch_alerts(api, client), before)
        return verdict
    finally:
        if own:
            client.close()
