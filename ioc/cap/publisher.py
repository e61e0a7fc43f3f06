"""`CapPublisher`: a notifier that turns the alerts of `public: true` rules into CAP 1.2 messages.

- an alert fires: `Alert`;
- it is told again while firing with something the public sees changed (severity, headline, area):
  `Update`, referring to every earlier message of the alert;
- it resolves (after having been published): `Cancel` with `responseType` AllClear and urgency Past,
  referring to them too.
Pending alerts, acknowledgements and silences are the operators' business and publish nothing (a silence
mutes the operators' pagers, not a public warning).

Severity mapping (CAP urgency / severity / certainty): critical -> Immediate / Severe / Observed,
warning -> Expected / Moderate / Observed, info -> Future / Minor / Observed: rules fire on measured data.
Category: the rule's `cap.category`, else Env for `env.*` metrics, Infra for status rules, else Other.
The area: the alert's `area` label (or the province's code) with its registry name and those of the units
above it, its code as a `GSO` geocode and, when the registry has the unit's centre, a circle around it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from prometheus_client.core import Metric

from ioc.alerts.alert import Alert, Change
from ioc.alerts.outbox import Notification, Settle
from ioc.areas import AreaRegistry, local_date
from ioc.cap.config import CapSettings
from ioc.cap.message import CapArea, CapMessage, CapText, MsgType, Reference, render
from ioc.cap.store import CapStore, StoredMessage
from ioc.metrics import counter
from ioc.rules.template import Template

log = structlog.get_logger("ioc.cap")

SEVERITY = {"critical": ("Immediate", "Severe", "Observed"), "warning": ("Expected", "Moderate", "Observed"),
            "info": ("Future", "Minor", "Observed")}
CIRCLE_KM = {"commune": 5.0, "district": 20.0, "province": 60.0}  # around a unit's centre, roughly its size
CANCEL_PREFIX = {"vi-VN": "Hết cảnh báo: ", "en-US": "All clear: "}

RuleLookup = Callable[[str], Any]  # rule id -> the loaded rule (a RuleBase), or None


def category_of(rule: Any) -> str:
    """The rule's CAP category: its own, else from what it watches."""
    if rule.cap.category is not None:
        return str(rule.cap.category)
    metrics = rule.match.values("metric")
    if metrics and all(metric.startswith("env.") for metric in metrics):
        return "Env"
    if rule.event_types() == frozenset({"status"}):
        return "Infra"
    return "Other"


class CapPublisher:
    """A durable notifier (`ioc.alerts.outbox.Durable`): the alert manager writes an outbox row with each
    change it `wants` (a public rule's firing or resolve) in the change's own transaction and hands it over
    with `deliver`; a crash before the message is kept delivers it again at the next start. Delivering
    twice publishes once (a repeat is no Update, and a second Cancel is nothing). `notify` does the same
    without the outbox."""

    name = "cap"

    def __init__(self, store: CapStore, *, rules: RuleLookup, settings: CapSettings | None = None,
                 areas: AreaRegistry | None = None, default_area: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.rules = rules
        self.settings = settings or CapSettings()
        self.areas = areas
        self.default_area = default_area
        self.clock = clock
        self.published = {"Alert": 0, "Update": 0, "Cancel": 0}

    def wants(self, alert: Alert, change: Change) -> bool:
        if change not in ("firing", "resolved"):
            return False
        rule = self.rules(alert.rule)
        return rule is not None and bool(getattr(rule, "public", False))

    def deliver(self, note: Notification, settle: Settle) -> None:
        self.notify(note.alert, note.change)
        settle(note.seq)

    def notify(self, alert: Alert, change: Change) -> None:
        if not self.wants(alert, change):
            return
        rule = self.rules(alert.rule)
        history = self.store.of_alert(alert.id)
        if history and history[-1].msg_type == "Cancel":
            return  # told already that it is over
        msg_type: MsgType
        if change == "resolved":
            if not history:
                return  # it was never published (resolved before the public heard of it)
            msg_type = "Cancel"
        else:
            msg_type = "Update" if history else "Alert"
        message = self.message(alert, rule, msg_type, history)
        digest = _digest(alert)
        if msg_type == "Update" and history[-1].digest == digest:
            return  # a repeat: nothing the public sees changed
        self.store.add(StoredMessage(0, message.identifier, alert.id, msg_type, message.sent,
                                     message.texts[0].headline, digest, render(message)))
        self.published[msg_type] += 1
        log.info("cap.published", identifier=message.identifier, msg_type=msg_type, rule=alert.rule)

    def metrics(self) -> Iterable[Metric]:
        yield counter("ioc_cap_messages", "CAP 1.2 messages published for public rules, by msgType.",
                      ("msg_type",), {(kind,): float(count) for kind, count in self.published.items()})

    def message(self, alert: Alert, rule: Any, msg_type: MsgType, history: list[StoredMessage]) -> CapMessage:
        """The CAP message for `alert` (pure, given the earlier messages of the same alert)."""
        sender = self.settings.sender
        urgency, severity, certainty = SEVERITY.get(alert.severity, SEVERITY["info"])
        if msg_type == "Cancel":
            urgency, severity = "Past", "Minor"
        area_code = alert.labels.get("area") or self.default_area
        texts = [self._text("vi-VN", rule.cap.event or rule.id, alert.summary or rule.id,
                            rule.cap.instruction, msg_type)]
        english = alert.summary_en  # the rule's own English summary, as it fired; cap.summary_en wins
        if rule.cap.summary_en:
            english = Template.parse(rule.cap.summary_en).render(self._values(alert, rule, area_code))
        if english:
            texts.append(self._text("en-US", rule.cap.event_en or rule.cap.event or rule.id, english,
                                    rule.cap.instruction_en, msg_type))
        parameters = () if alert.value is None else (("value", f"{alert.value:g}"),)
        return CapMessage(
            identifier=f"{sender}.{alert.id}.{len(history) + 1}", sender=sender, sent=self.clock(),
            msg_type=msg_type, incident=alert.id, category=category_of(rule), urgency=urgency,
            severity=severity, certainty=certainty, texts=tuple(texts), area=self._area(area_code, alert),
            sender_name=self.settings.sender_name, onset=alert.fired_at or alert.started_at,
            response_type="AllClear" if msg_type == "Cancel" else None,
            references=tuple(Reference(sender, old.identifier, old.sent) for old in history),
            event_code=("ioc:rule", alert.rule), parameters=parameters)

    @staticmethod
    def _text(language: str, event: str, summary: str, instruction: str | None, msg_type: MsgType) -> CapText:
        headline = (CANCEL_PREFIX[language] if msg_type == "Cancel" else "") + summary
        return CapText(language, event, headline[:160], headline, instruction)

    def _values(self, alert: Alert, rule: Any, area_code: str | None) -> dict[str, Any]:
        """What a `cap.summary_en` template may name: the labels, value, threshold and area_name."""
        values: dict[str, Any] = {**alert.labels, "value": alert.value}
        area = self._unit(area_code, alert)
        if area_code is not None:
            values["area_name"] = area.name if area is not None else area_code
        threshold = getattr(rule, "threshold", None)
        if isinstance(threshold, dict) and area is not None:
            threshold = threshold.get(area.level)
        values["threshold"] = threshold if isinstance(threshold, int | float) else None
        return values

    def _unit(self, code: str | None, alert: Alert) -> Any:
        if code is None or self.areas is None:
            return None
        return self.areas.get(code, local_date(alert.fired_at or alert.started_at))

    def _area(self, code: str | None, alert: Alert) -> CapArea:
        unit = self._unit(code, alert)
        if unit is None or self.areas is None:
            return CapArea(description=code or self.settings.sender_name, geocode=code)
        day = local_date(alert.fired_at or alert.started_at)
        names = [unit.name, *(above.name for above in self.areas.ancestors(unit.code, day))]
        lat, lon = getattr(unit, "lat", None), getattr(unit, "lon", None)
        circle = None
        if lat is not None and lon is not None:
            circle = f"{lat:.5f},{lon:.5f} {CIRCLE_KM.get(unit.level, 5.0):g}"
        return CapArea(description=", ".join(names), geocode=unit.code, circle=circle)


def _digest(alert: Alert) -> str:
    public = f"{alert.severity}\0{alert.summary}\0{alert.labels.get('area', '')}"
    return hashlib.sha256(public.encode()).hexdigest()[:16]
