"""`[alerts]`: retention of resolved alerts and expired silences, webhooks, inhibition rules, the SSE stream.

```toml
[alerts]
resolved_retention = "30d"     # resolved alerts are kept (and listed by ?state=resolved) this long
resolved_max = 10000           # ... and at most this many (the oldest go first)
silence_retention = "5d"       # expired silences stay listed this long (docs/http-api.md), then are purged
audit_retention = "365d"       # operators' actions (acks, silences) are kept this long

[[alerts.webhooks]]
url = "https://chat.example.vn/hooks/ioc"
timeout = "5s"
max_attempts = 5               # then the delivery is counted failed
headers = {Authorization = "Bearer ..."}

[[alerts.alertmanagers]]       # pushed as Prometheus does: POST {url}/api/v2/alerts
url = "http://alertmanager.example.vn:9093"
resend_interval = "1m"

[[alerts.inhibit]]             # a province-wide outage mutes its communes' outage and cell alerts
source_matchers = ["rule = coverage-outage"]
target_matchers = ["rule =~ coverage-outage|cell-down"]
within_area = true
```
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeAlias
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator

from ioc.config_types import Duration, _read_secret, _Section, parse_duration
from ioc.matchers import MatcherInput

# What an alert can go through; notifiers subscribe to some (declared here, with the settings that name
# them; `ioc.alerts.alert` re-exports it).
Change: TypeAlias = Literal["pending", "firing", "resolved", "acknowledged", "unacknowledged", "muted",
                            "unmuted"]
"""What happened to an alert: a state change (`pending`, `firing`, `resolved`), an operator's action
(`acknowledged`, `unacknowledged`), or a silence or inhibition starting or ending (`muted`, `unmuted`)."""

class WebhookSettings(_Section):
    """One webhook receiver: every change in `changes` of an unmuted alert is POSTed to `url` as
    `{"alert": ..., "change": ...}`, retried with exponential backoff and jitter on 5xx, 429, timeouts
    and connection errors, at most `max_attempts` times. Deliveries wait in a queue of `queue_max`;
    when it is full a delivery is dropped and counted."""

    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+")]
    name: str = ""  # the `notifier` label of its metrics; default `webhook:HOST[:PORT]` (never the path)
    timeout: Duration = parse_duration("5s")
    max_attempts: int = Field(default=5, ge=1, le=100)
    headers: dict[str, str] = {}
    changes: list[Change] = ["firing", "resolved", "unmuted"]
    backoff_min: Duration = parse_duration("1s")
    backoff_max: Duration = parse_duration("60s")
    queue_max: int = Field(default=1000, ge=1)

    @model_validator(mode="after")
    def _default_name(self) -> WebhookSettings:
        if not self.name:
            self.name = f"webhook:{urlsplit(self.url).netloc.rpartition('@')[2]}"
        if self.backoff_max < self.backoff_min:
            raise ValueError("backoff_max must not be less than backoff_min")
        return self


class AlertmanagerSettings(_Section):
    """One Alertmanager the leader pushes alerts to, as Prometheus does (`ioc.alerts.alertmanager_push`):
    firing alerts re-sent every `resend_interval` (with an `endsAt` four intervals ahead), resolved ones
    with their `endsAt`; a failed post is retried with exponential backoff and jitter, always with the
    latest state. `labels` are added to every alert (e.g. `source = "ioc-binhthuan"` for routing)."""

    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+")]  # Alertmanager's base URL (+ path prefix)
    name: str = ""  # the `alertmanager` label of its metrics; default `alertmanager:HOST[:PORT]`
    token: SecretStr = SecretStr("")  # sent as `Authorization: Bearer ...` (a proxy in front of it)
    token_file: str = ""
    timeout: Duration = parse_duration("10s")
    resend_interval: Duration = Field(default=parse_duration("1m"), gt=0)  # Prometheus' resend_delay
    backoff_min: Duration = parse_duration("1s")
    backoff_max: Duration = parse_duration("60s")
    labels: dict[str, str] = Field(default_factory=dict)
    queue_max: int = Field(default=10_000, ge=1)  # alerts tracked (firing + recently resolved)

    @model_validator(mode="after")
    def _defaults(self) -> AlertmanagerSettings:
        if not self.name:
            self.name = f"alertmanager:{urlsplit(self.url).netloc.rpartition('@')[2]}"
        if self.token_file:
            self.token = SecretStr(_read_secret(self.token_file))
        if self.backoff_max < self.backoff_min:
            raise ValueError("backoff_max must not be less than backoff_min")
        return self


class InhibitRuleSettings(_Section):
    """Alertmanager's inhibition rule: while an alert matching `source_matchers` fires, alerts matching
    `target_matchers` with the same values of the `equal` labels are muted. `within_area` (an IOC
    extension): the target's `area` must also be the source's area or one of its descendants."""

    source_matchers: Annotated[list[MatcherInput], Field(min_length=1)]
    target_matchers: Annotated[list[MatcherInput], Field(min_length=1)]
    equal: list[str] = []
    within_area: bool = False


class AlertsSettings(_Section):
    resolved_retention: Duration = parse_duration("30d")
    resolved_max: int = Field(default=10_000, ge=0)
    silence_retention: Duration = parse_duration("5d")
    audit_retention: Duration = parse_duration("365d")
    webhooks: list[WebhookSettings] = []
    alertmanagers: list[AlertmanagerSettings] = Field(default_factory=list)
    # The daemon's URL as operators reach it: links in what goes to Alertmanager (its generatorURL).
    external_url: Annotated[str, Field(pattern=r"^(https?://[^/\s]+.*)?$")] = ""
    inhibit: list[InhibitRuleSettings] = []
    stream_queue_max: int = Field(default=1000, ge=1)  # SSE events waiting for one client; then it is cut
    stream_heartbeat: Duration = parse_duration("15s")  # a comment line this often keeps proxies open
    stream_retry: Duration = parse_duration("5s")  # the `retry:` hint: how soon a browser reconnects
