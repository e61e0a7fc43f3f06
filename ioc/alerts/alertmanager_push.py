"""Pushing alerts to Alertmanagers the way Prometheus does (CONTRACT §9, `[[alerts.alertmanagers]]`).

One `AlertmanagerPush` per configured Alertmanager. It keeps the alerts it has been told about, one per
fingerprint (rule id + group labels), and a thread POSTs them to `{url}/api/v2/alerts`:

- a *firing* alert with `endsAt` four resend intervals ahead, re-sent every `resend_interval` while it
  fires (Prometheus' `resend_delay`), so Alertmanager keeps it active and lets it expire by itself if the
  daemon goes away; a *resolved* one with `endsAt` = when it resolved, re-sent for 15 minutes (Prometheus'
  resolved retention) in case a post was lost; pending alerts are not sent (Prometheus does not either);
- a change is posted at once (after a few milliseconds that gather a burst into one post); a failed post
  is retried with exponential backoff and jitter (`ioc.retry.Backoff`), forever, and always with
  the latest state: what Alertmanager needs is the current set, never a replay of every step;
- silenced, inhibited and acknowledged alerts are sent all the same (their state in annotations): an
  Alertmanager does its own routing and silencing, and an alert that stopped coming would end there after
  its `endsAt` and page everyone "resolved" while it still fires.

Durable (`ioc.alerts.outbox`): a change's outbox row is settled once a post holding that alert's state (or
a later one: a change superseded before it was posted is settled with it) was accepted, or refused for
good (a 4xx). A crash loses nothing: the outbox's rows come again at start, and `start(active)` gives the
firing alerts the store holds. Keyed by fingerprint as Prometheus keys its active alerts: a resolved
episode re-sent after the next one started would end the new one in Alertmanager.

`leader` (HA): while it answers False nothing is posted; everything known is sent once it answers True.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import structlog
from prometheus_client.core import Metric

from ioc.alerts.alert import Alert, Change
from ioc.alerts.config import AlertmanagerSettings, AlertsSettings
from ioc.alerts.errors import NotifyError
from ioc.alerts.outbox import Notification, Settle
from ioc.metrics import counter, gauge
from ioc.retry import Backoff, parse_retry_after

log = structlog.get_logger("ioc.alerts.alertmanager_push")

RESOLVED_KEEP = 15 * 60.0  # seconds a resolved alert is re-sent (Prometheus' resolvedRetention)
VALID_FOR = 4  # resend intervals a firing alert's endsAt lies ahead (Prometheus: 4 x max(resend, eval))
BATCH_MAX = 256  # alerts in one POST (Prometheus' maxBatchSize)
GATHER = 0.02  # seconds a change waits for the rest of its burst before the post
POST_OUTCOMES = ("ok", "error", "refused")  # 2xx; retryable (5xx, 429, timeout, connection); other 4xx
WANTED: frozenset[str] = frozenset({"firing", "resolved", "acknowledged", "unacknowledged", "muted", "unmuted"})
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # what Alertmanager 0.25 takes as a label name
_INVALID_LABEL_CHAR = re.compile(r"[^A-Za-z0-9_]")


def _settle_nothing(seq: int, *, now: bool = False) -> None:
    """Settle callback of an alert seeded from the store (it has no outbox row)."""


def am_time(timestamp: float) -> str:
    """Unix seconds as RFC 3339 with a `Z`, the form Alertmanager writes itself."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def label_name(name: str) -> str:
    """A label name Alertmanager accepts: other characters become `_` (a group label from an event field
    such as `cell-id` must not get the whole batch refused)."""
    if _LABEL_NAME.match(name):
        return name
    cleaned = _INVALID_LABEL_CHAR.sub("_", name)
    return cleaned if cleaned[:1].isalpha() or cleaned[:1] == "_" else f"_{cleaned}"


def am_alert(alert: Alert, *, now: float, valid_for: float, extra_labels: Mapping[str, str] | None = None,
             external_url: str = "") -> dict[str, Any]:
    """One alert in Alertmanager's `postableAlert` shape, at wall-clock time `now`.

    Labels: the extra labels of the config, the group labels, `alertname` (the rule id) and `severity`
    (a group label of the same name wins, as in silences' matching); empty values left out, as Prometheus
    drops them. Event times are clamped to `now`, since Alertmanager refuses an `endsAt` before `startsAt`
    and a device's clock may run ahead."""
    labels = {label_name(k): v for k, v in (extra_labels or {}).items() if v}
    labels.update({label_name(k): v for k, v in alert.match_labels().items() if v and k != "rule"})
    starts = min(alert.fired_at if alert.fired_at is not None else alert.started_at, now)
    if alert.state == "resolved":
        ends = max(starts, min(alert.resolved_at if alert.resolved_at is not None else now, now))
    else:
        ends = now + valid_for
    annotations = {"summary": alert.summary, "ioc_alert_id": alert.id, "ioc_fingerprint": alert.fingerprint}
    if alert.value is not None:
        annotations["value"] = f"{alert.value:.15g}"  # 180.0 -> "180", 0.1 -> "0.1"
    if alert.runbook:
        annotations["runbook_url"] = alert.runbook
    if alert.acknowledged is not None:
        annotations["acknowledged_by"] = alert.acknowledged.by
        annotations["acknowledged_at"] = am_time(alert.acknowledged.at)
    if alert.silenced_by:
        annotations["silenced_by"] = ",".join(alert.silenced_by)
    if alert.inhibited_by:
        annotations["inhibited_by"] = alert.inhibited_by
    body: dict[str, Any] = {"labels": labels, "annotations": annotations, "startsAt": am_time(starts),
                            "endsAt": am_time(ends)}
    if external_url:
        body["generatorURL"] = f"{external_url.rstrip('/')}/api/v1/alerts/{alert.id}"
    return body


@dataclass(slots=True)
class _Tracked:
    """What this Alertmanager is owed of one fingerprint."""

    alert: Alert
    seq: int  # the outbox row of the latest change (0: none)
    settle: Settle
    dirty: bool = True  # changed since it was last posted
    sent_at: float | None = None  # monotonic time of the last accepted post holding it
    resolved_mono: float | None = None  # monotonic time it was told resolved


class AlertmanagerPush:
    """A durable notifier that keeps one Alertmanager up to date (see the module doc)."""

    def __init__(self, settings: AlertmanagerSettings, *, external_url: str = "",
                 client: httpx.Client | None = None, leader: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 rand: Callable[[float, float], float] = random.uniform) -> None:
        self.settings = settings
        self.name = settings.name
        self.url = settings.url.rstrip("/") + "/api/v2/alerts"
        self.external_url = external_url
        self._backoff = Backoff(settings.backoff_min, settings.backoff_max, rand)  # the shared ioc.retry
        headers = {"Content-Type": "application/json"}
        if settings.token.get_secret_value():
            headers["Authorization"] = f"Bearer {settings.token.get_secret_value()}"
        self._client = client or httpx.Client(timeout=settings.timeout, follow_redirects=False)
        self._headers = headers
        self._leader = leader
        self._clock = clock
        self._monotonic = monotonic
        self._tracked: dict[str, _Tracked] = {}  # by fingerprint, in the order first told
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._started = False
        self._closing = False
        self._abort = threading.Event()
        self._failing = False
        self.posts: dict[str, int] = dict.fromkeys(POST_OUTCOMES, 0)
        self.alerts_sent = 0
        self.alerts_dropped = 0
        self.last_success = 0.0
        self._outcomes = {"sent": 0, "failed": 0, "dropped": 0}

    # --- the notifier side (under the alert manager's lock: never waits) --------------------------------

    def wants(self, alert: Alert, change: Change) -> bool:
        """Firing and resolving (of an alert that fired), and what changes a firing alert's annotations."""
        if change not in WANTED:
            return False
        if change == "resolved":
            return alert.fired_at is not None
        return alert.state == "firing"

    def notify(self, alert: Alert, change: Change) -> None:
        if self.wants(alert, change):
            self.deliver(Notification(alert, change, ""), _settle_nothing)

    def deliver(self, note: Notification, settle: Settle) -> None:
        alert = note.alert
        superseded: tuple[int, Settle] | None = None
        with self._cond:
            if self._closing:
                return  # stays in the outbox: sent again at the next start
            tracked = self._tracked.get(alert.fingerprint)
            if tracked is None:
                if len(self._tracked) >= self.settings.queue_max and not self._make_room():
                    self.alerts_dropped += 1
                    self._outcomes["dropped"] += 1
                    log.warning("alertmanager.queue_full", alertmanager=self.name, alert=alert.id,
                                queue_max=self.settings.queue_max)
                    superseded = (note.seq, settle)
                else:
                    tracked = self._tracked[alert.fingerprint] = _Tracked(alert, note.seq, settle)
            else:
                superseded = (tracked.seq, tracked.settle)  # the newer state is what will be posted
                tracked.alert, tracked.seq, tracked.settle, tracked.dirty = alert, note.seq, settle, True
            if tracked is not None:
                tracked.resolved_mono = self._monotonic() if alert.state == "resolved" else None
            self._wake()
        if superseded is not None and superseded[0] > 0:
            superseded[1](superseded[0])

    def _make_room(self) -> bool:
        """Drop the oldest resolved alert to take a new one (under the lock); False when all fire."""
        for fingerprint, tracked in self._tracked.items():
            if tracked.alert.state == "resolved":
                del self._tracked[fingerprint]
                if tracked.dirty:
                    self.alerts_dropped += 1
                    self._outcomes["dropped"] += 1
                tracked.settle(tracked.seq)
                return True
        return False

    def start(self, active: Iterable[Alert] = ()) -> None:
        """Start posting, first the firing alerts the store holds (`AlertManager.active()`): a restarted
        daemon re-notifies nothing, but Alertmanager must keep hearing of what still fires. Call it
        before `AlertManager.resume()` hands over the outbox's leftovers."""
        with self._cond:
            for alert in active:
                if alert.state == "firing" and alert.fingerprint not in self._tracked:
                    self._tracked[alert.fingerprint] = _Tracked(alert, 0, _settle_nothing)
            self._started = True
            self._wake()

    def _wake(self) -> None:
        if self._started and self._thread is None and not self._closing:
            self._thread = threading.Thread(target=self._run, name=f"notify-{self.name}", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    # --- the posting thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        gathered = False
        while True:
            with self._cond:
                if self._abort.is_set():
                    return
                wait = self._next_wait()
                if self._closing and (wait is None or wait > 0 or not self._leading()):
                    self._thread = None
                    self._cond.notify_all()
                    return
                if wait is None or wait > 0:
                    self._cond.wait(wait)
                    gathered = False
                    continue
            if not gathered and not self._closing:  # a burst of changes: one post
                gathered = True
                self._abort.wait(GATHER)
                continue
            gathered = False
            delay = self._post_due()
            if delay and self._abort.wait(delay):
                return

    def _leading(self) -> bool:
        return self._leader is None or self._leader()

    def _next_wait(self) -> float | None:
        """Seconds until something is due (0: now), None: nothing is (under the lock)."""
        if not self._tracked:
            return None
        if not self._leading():
            return 1.0  # look again: leadership may come
        now = self._monotonic()
        soonest: float | None = None
        for tracked in self._tracked.values():
            if tracked.dirty:
                return 0.0
            due = tracked.sent_at + self.settings.resend_interval if tracked.sent_at is not None else now
            if tracked.resolved_mono is not None:
                due = min(due, tracked.resolved_mono + RESOLVED_KEEP)
            soonest = due if soonest is None else min(soonest, due)
        return None if soonest is None else max(0.0, soonest - now)

    def _post_due(self) -> float:
        """Post everything due, in batches; the backoff delay before trying again (0: all went)."""
        with self._cond:
            self._forget_resolved()
            now = self._monotonic()
            due = [(fp, t.alert, t.seq) for fp, t in self._tracked.items()
                   if t.dirty or t.sent_at is None or now - t.sent_at >= self.settings.resend_interval]
        for start in range(0, len(due), BATCH_MAX):
            batch = due[start:start + BATCH_MAX]
            try:
                self._post([alert for _, alert, _ in batch])
            except NotifyError as error:
                if error.retryable:
                    return self._failed(error, len(batch))
                self._refused(error, len(batch))
            else:
                self._succeeded(len(batch))
            self._posted(batch)
        return 0.0

    def _forget_resolved(self) -> None:
        """Resolved alerts are re-sent for RESOLVED_KEEP, then forgotten (under the lock); one never
        posted by then (the Alertmanager was away all that time) is settled and counted dropped."""
        now = self._monotonic()
        for fingerprint, tracked in list(self._tracked.items()):
            if tracked.resolved_mono is not None and now - tracked.resolved_mono >= RESOLVED_KEEP:
                del self._tracked[fingerprint]
                if tracked.dirty:
                    self.alerts_dropped += 1
                    self._outcomes["dropped"] += 1
                tracked.settle(tracked.seq)

    def _post(self, alerts: list[Alert]) -> None:
        """One POST; NotifyError (retryable or not) when it was not accepted."""
        now = self._clock()
        valid_for = VALID_FOR * self.settings.resend_interval
        body = orjson.dumps([am_alert(alert, now=now, valid_for=valid_for, extra_labels=self.settings.labels,
                                      external_url=self.external_url) for alert in alerts])
        try:
            response = self._client.post(self.url, content=body, headers=self._headers)
        except httpx.TimeoutException:
            raise NotifyError(f"no answer within {self.settings.timeout:g}s", retryable=True) from None
        except httpx.TransportError as error:
            raise NotifyError(f"{type(error).__name__}: {error}", retryable=True) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        retry_after = parse_retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
        raise NotifyError(f"HTTP {status}: {response.text[:200]}", retryable=status >= 500 or status == 429,
                          retry_after=retry_after)

    def _posted(self, batch: list[tuple[str, Alert, int]]) -> None:
        """Mark a batch as told (accepted or refused for good) and settle what it carried."""
        now = self._monotonic()
        settled: list[tuple[int, Settle]] = []
        with self._cond:
            for fingerprint, alert, seq in batch:
                tracked = self._tracked.get(fingerprint)
                if tracked is None or tracked.alert is not alert:
                    continue  # changed meanwhile: the newer state goes in the next post
                tracked.dirty, tracked.sent_at = False, now
                if tracked.seq:
                    settled.append((tracked.seq, tracked.settle))
                    tracked.seq, tracked.settle = 0, _settle_nothing
        for seq, settle in settled:
            settle(seq)

    def _succeeded(self, alerts: int) -> None:
        with self._cond:
            self.posts["ok"] += 1
            self.alerts_sent += alerts
            self._outcomes["sent"] += alerts
            self.last_success = self._clock()
            self._backoff.reset()
        if self._failing:
            self._failing = False
            log.info("alertmanager.recovered", alertmanager=self.name)

    def _refused(self, error: NotifyError, alerts: int) -> None:
        with self._cond:
            self.posts["refused"] += 1
            self.alerts_dropped += alerts
            self._outcomes["failed"] += alerts
            self._backoff.reset()
        log.error("alertmanager.post_refused", alertmanager=self.name, alerts=alerts, error=str(error),
                  effect="these alert states are not sent again until they change or are due again")

    def _failed(self, error: NotifyError, alerts: int) -> float:
        with self._cond:
            self.posts["error"] += 1
            delay = self._backoff.failed(error.retry_after)
        if not self._failing:  # one line per episode; the counter has the rest
            self._failing = True
            log.warning("alertmanager.post_failed", alertmanager=self.name, alerts=alerts, error=str(error),
                        effect="retried with backoff, with the latest state")
        return delay

    # --- what the daemon sees -------------------------------------------------------------------------

    def outcomes(self) -> Mapping[str, int]:
        """For `ioc_alert_notifications_total`: alerts sent in accepted posts, refused, dropped."""
        with self._cond:
            return dict(self._outcomes)

    def pending(self) -> int:
        """Alerts whose latest state is not posted yet."""
        with self._cond:
            return sum(1 for tracked in self._tracked.values() if tracked.dirty)

    def tracked(self) -> int:
        with self._cond:
            return len(self._tracked)

    def metrics(self) -> Iterable[Metric]:
        return push_metrics(self)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no alert's latest state is owed a post; False on timeout (for tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: not any(t.dirty for t in self._tracked.values()), timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Post what is owed for up to `timeout` seconds, then stop; what is not posted stays in the outbox
        for the next start."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self._abort.set()
                with self._cond:
                    self._cond.notify_all()
                thread.join(max(1.0, self.settings.timeout + 1.0))
        self._client.close()


def push_metrics(push: AlertmanagerPush) -> Iterable[Metric]:
    """The `ioc_alertmanager_*` families of one pusher."""
    # Plain reads of ints the posting thread bumps: a scrape may see one post's counts half applied.
    posts = {(push.name, outcome): float(n) for outcome, n in dict(push.posts).items()}
    sent, dropped, last = push.alerts_sent, push.alerts_dropped, push.last_success
    label = ("alertmanager",)
    yield counter("ioc_alertmanager_posts", "POSTs to an Alertmanager's /api/v2/alerts, by outcome (ok: 2xx; "
                  "error: 5xx, 429, timeout or no connection, retried; refused: another 4xx).",
                  ("alertmanager", "outcome"), posts)
    yield counter("ioc_alertmanager_alerts_sent", "Alerts in POSTs an Alertmanager accepted (re-sends "
                  "included).", label, {(push.name,): float(sent)})
    yield counter("ioc_alertmanager_alerts_dropped", "Alert states never accepted: refused (4xx), or "
                  "pushed out by a full queue or the end of the resolved retention.", label,
                  {(push.name,): float(dropped)})
    yield gauge("ioc_alertmanager_queue_length", "Alerts whose latest state is not posted yet.", label,
                {(push.name,): float(push.pending())})
    yield gauge("ioc_alertmanager_alerts", "Alerts kept up to date there: firing, and resolved ones "
                "re-sent for 15 minutes.", label, {(push.name,): float(push.tracked())})
    yield gauge("ioc_alertmanager_last_success_timestamp_seconds", "When a POST was last accepted (Unix "
                "time; 0: never).", label, {(push.name,): last})


def alertmanager_pushers(settings: AlertsSettings, *, http_port: int = 0,
                         leader: Callable[[], bool] | None = None) -> list[AlertmanagerPush]:
    """One pusher per `[[alerts.alertmanagers]]`. Links point at `[alerts] external_url`, by default
    `http://<this host's name>:<http port>` (Prometheus' default is made the same way; the host name, not
    a DNS lookup, which could hang the start on a closed network)."""
    if not settings.alertmanagers:
        return []
    external = settings.external_url or (f"http://{socket.gethostname()}:{http_port}" if http_port else "")
    return [AlertmanagerPush(am, external_url=external, leader=leader) for am in settings.alertmanagers]
