"""The one-stop-shop dossier system (hệ thống một cửa điện tử, source `dvc-binhthuan`): dossier events.

Dossiers (hồ sơ TTHC) arrive per procedure at the province's agencies with a daily rhythm: at the
counter and by post only in office hours (Mon-Fri less holidays, 07:30-11:30 and 13:30-17:00
Asia/Ho_Chi_Minh), online at any time but mostly in office hours (`after_hours` is the night and
weekend rate relative to office hours). Each dossier's due date is its procedure's `days` of office
hours after it was received. Officers act only in office hours: a dossier goes `received` ->
`processing` -> (`supplement` while the citizen completes it, which moves the due date by the days it
took) -> (`interoperating` with another agency) -> (`paying` a fee) -> `releasing` -> `done`, or ends
`denied` or `cancelled`. Processing takes a long-tailed share of the allowed time; the `late` share
finishes after the due date. Every event carries `received_at`, `due_at` and, once finished,
`finished_at`.

A `backlog` incident is a surge at one agency that stalls: its dossiers arrive at the counter, are due
soon and are only finished (late) when the incident ends, so the daemon's overdue count of the agency's
area rises and falls.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from ioc.simulators.areas import Level
from ioc.simulators.incidents import Backlog, occurrences
from ioc.simulators.subsystems.base import LOCAL_OFFSET, Config, Context, Stream, TimeText, WorkHours
from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME = "dossiers"
Share = Annotated[float, Field(ge=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Procedure(_Strict):
    """An administrative procedure (thủ tục hành chính) and how it is handled."""

    code: str  # the TTHC code of the national database
    name: str = ""
    days: Annotated[float, Field(gt=0, le=365)]  # office days allowed (0.5 = same day)
    weight: Annotated[float, Field(gt=0)] = 1.0  # its share of arrivals, relative to the others
    levels: list[Level] = Field(default=["commune", "district"], min_length=1)  # agencies handling it


# Codes and times in the manner of the national procedure database; ILLUSTRATIVE, not checked against it.
DEFAULT_PROCEDURES = [
    Procedure(code="2.000908", name="Chứng thực bản sao từ bản chính", days=0.5, weight=30, levels=["commune"]),
    Procedure(code="1.001193", name="Đăng ký khai sinh", days=0.5, weight=15, levels=["commune"]),
    Procedure(code="1.000894", name="Đăng ký kết hôn", days=1, weight=5, levels=["commune"]),
    Procedure(code="1.001612", name="Đăng ký thành lập hộ kinh doanh", days=3, weight=6),
    Procedure(code="1.003003", name="Đăng ký biến động quyền sử dụng đất", days=10, weight=8),
    Procedure(code="1.009994", name="Cấp giấy phép xây dựng nhà ở riêng lẻ", days=15, weight=4),
    Procedure(code="2.001263", name="Cấp giấy chứng nhận quyền sử dụng đất lần đầu", days=20, weight=3),
    Procedure(code="2.000794", name="Cấp phiếu lý lịch tư pháp", days=10, weight=4, levels=["province"]),
    Procedure(code="1.002809", name="Đổi giấy phép lái xe", days=5, weight=3, levels=["province"]),
]


class ChannelMix(_Strict):
    """Shares of arrivals in office hours by channel (normalised; outside office hours all are online)."""

    online: Share = 0.72
    counter: Share = 0.25
    post: Share = 0.03

    @model_validator(mode="after")
    def _some(self) -> ChannelMix:
        if self.online + self.counter + self.post <= 0:
            raise ValueError("channels: at least one share must be above 0")
        return self


class DossiersConfig(Config):
    source: str = Field(default="dvc-binhthuan", pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    rate: float = Field(default=0.3, gt=0)  # events per second in office hours
    agencies: list[str] | None = None  # area codes; default the province and every district and commune
    channels: ChannelMix = ChannelMix()
    after_hours: Share = 0.15
    supplement: Share = 0.08
    interoperating: Share = 0.1
    paying: Share = 0.3
    late: Share = 0.03
    denied: Share = 0.01
    cancelled: Share = 0.005
    procedures: list[Procedure] = Field(default=DEFAULT_PROCEDURES, min_length=1)

    def events_per_dossier(self) -> float:
        """About how many events one dossier makes (to turn the event rate into arrivals)."""
        return 4 + 2 * self.supplement + 2 * self.interoperating + self.paying


def sources(config: DossiersConfig) -> list[str]:
    return [config.source]


# The daily rhythm of arrivals in office hours: busy mornings, a quieter end of the afternoon.
_RHYTHM = ((7 * 3600 + 1800, 10 * 3600, 1.3), (10 * 3600, 11 * 3600 + 1800, 1.0),
           (13 * 3600 + 1800, 15 * 3600 + 1800, 1.1), (15 * 3600 + 1800, 17 * 3600, 0.7))
_PEAK = 1.3


@dataclass(slots=True)
class _Dossier:
    dossier_id: str
    procedure: str
    agency: str
    level: str
    channel: str
    received: str
    due: str
    steps: list[tuple[float, str]]  # (time, status) in time order
    due_changes: list[tuple[int, str]]  # (step index from which, new due text)


class _Agencies:
    """Which agencies handle each procedure, and the weighted choice of a procedure."""

    def __init__(self, config: DossiersConfig, context: Context) -> None:
        codes = config.agencies
        if codes is None:
            codes = [area.code for area in context.units()]
        self.level = {code: area.level for code in codes if (area := context.areas.get(code, context.day))}
        self.procedures: list[Procedure] = []
        self.handlers: list[list[str]] = []
        for procedure in config.procedures:
            handlers = [code for code, level in self.level.items() if level in procedure.levels]
            if handlers:
                self.procedures.append(procedure)
                self.handlers.append(handlers)
        self.cumulative = list(itertools.accumulate(p.weight for p in self.procedures))


def _rhythm(hours: WorkHours, ts: float) -> tuple[float, bool]:
    """(relative arrival rate, in office hours) at `ts`."""
    ordinal, second = hours.local(ts)
    if hours.working_day(ordinal):
        for begin, end, factor in _RHYTHM:
            if begin <= second < end:
                return factor, True
    return 0.0, False


def stream(config: DossiersConfig, context: Context) -> Stream:
    agencies = _Agencies(config, context)
    if not agencies.procedures:
        return
    rng, hours, text = context.rng, WorkHours(), TimeText()
    arrivals_per_s = context.rate(config) / config.events_per_dossier() * _PEAK
    mix = config.channels
    channel_cut = (mix.online / (mix.online + mix.counter + mix.post),
                   (mix.online + mix.counter) / (mix.online + mix.counter + mix.post))
    start, end, tag, source = context.start, context.end, context.tag, config.source
    dumps = orjson.dumps
    heap: list[tuple[float, int, _Dossier, int]] = []
    sequence = itertools.count()
    numbers = itertools.count(1)
    surges = heapq.merge(*(((begin, finish, incident) for begin, finish in
                            occurrences(incident, context.cycle, end))
                           for incident in context.incidents if isinstance(incident, Backlog)),
                         key=lambda item: item[0])
    surge = next(surges, None)
    candidate = rng.expovariate(arrivals_per_s)  # the next offset at which a dossier may arrive

    def new_id(agency: str, at: float) -> str:
        day = datetime.fromtimestamp(at + LOCAL_OFFSET, UTC).strftime("%y%m%d")
        return f"{agency}-{day}-{tag}-{next(numbers):05d}"

    while True:
        due_step = heap[0][0] - start if heap else math.inf
        due_surge = surge[0] if surge is not None else math.inf
        nearest = min(due_step, due_surge, candidate)
        if end is not None and nearest >= end:
            return
        if nearest == due_step:
            _, _, dossier, index = heapq.heappop(heap)
            at, status = dossier.steps[index]
            for changed_from, due in dossier.due_changes:
                if index >= changed_from:
                    dossier.due = due
            payload: dict[str, Any] = {
                "id": f"{dossier.dossier_id}-{index}", "source": source, "type": "dossier", "time": text(at),
                "area": dossier.agency, "dossier_id": dossier.dossier_id, "procedure": dossier.procedure,
                "status": status, "received_at": dossier.received, "due_at": dossier.due}
            if status in ("done", "denied", "cancelled"):
                payload["finished_at"] = text(at)
            payload["channel"] = dossier.channel
            payload["level"] = dossier.level
            yield at - start, source, dumps(payload)
            if index + 1 < len(dossier.steps):
                heapq.heappush(heap, (dossier.steps[index + 1][0], next(sequence), dossier, index + 1))
        elif nearest == due_surge:
            assert surge is not None
            for dossier in _surge(surge[2], start + surge[0], start + surge[1], agencies, config, text, new_id):
                heapq.heappush(heap, (dossier.steps[0][0], next(sequence), dossier, 0))
            surge = next(surges, None)
        else:
            at = start + candidate
            candidate += rng.expovariate(arrivals_per_s)
            factor, office = _rhythm(hours, at)
            if rng.random() * _PEAK >= (factor if office else config.after_hours):
                continue
            draw = rng.random()
            channel = ("online" if draw < channel_cut[0] else "counter" if draw < channel_cut[1] else "post") \
                if office else "online"
            choice = bisect.bisect_right(agencies.cumulative, rng.random() * agencies.cumulative[-1])
            procedure = agencies.procedures[min(choice, len(agencies.procedures) - 1)]
            agency = rng.choice(agencies.handlers[min(choice, len(agencies.procedures) - 1)])
            dossier = _lifecycle(config, rng, hours, text, at, procedure, agency, agencies.level[agency],
                                 channel, new_id(agency, at))
            heapq.heappush(heap, (dossier.steps[0][0], next(sequence), dossier, 0))


def _lifecycle(config: DossiersConfig, rng: Any, hours: WorkHours, text: TimeText, at: float,
               procedure: Procedure, agency: str, level: str, channel: str, dossier_id: str) -> _Dossier:
    """Every step of one dossier, from its arrival at `at` (Unix seconds)."""
    allowed = procedure.days * WorkHours.DAY
    due = hours.add(at, allowed)
    steps: list[tuple[float, str]] = [(at, "received")]
    due_changes: list[tuple[int, str]] = []
    if rng.random() < config.cancelled:
        steps.append((hours.add(at, rng.uniform(0.05, 0.5) * allowed), "cancelled"))
        return _Dossier(dossier_id, procedure.code, agency, level, channel, text(at), text(due), steps, [])
    pick_work = rng.uniform(5, 90) * 60 if channel != "counter" else rng.uniform(1, 15) * 60
    picked = hours.add(at, pick_work)
    steps.append((picked, "processing"))
    if rng.random() < config.late:
        share = 1.0 + rng.expovariate(4.0)  # finished after the due date, by a quarter of the time or so
    else:
        share = min(0.97, rng.lognormvariate(math.log(0.35), 0.6))
    span = max(60.0, allowed * share - pick_work)  # office seconds from pick-up to the last step
    middle: list[str] = []
    if rng.random() < config.interoperating:
        middle += ["interoperating", "processing"]
    denied = rng.random() < config.denied
    if not denied and rng.random() < config.paying:
        middle.append("paying")
    ends = ["denied"] if denied else ["releasing", "done"]
    plan = middle + ends
    # A supplement is asked before a middle step or before the decision (never after `releasing`).
    supplement_at = rng.randrange(len(middle) + 1) if rng.random() < config.supplement else -1
    first_due = text(due)
    anchor, anchor_share = picked, 0.0  # steps are spread over `span` office seconds from `anchor`
    for position, status in enumerate(plan):
        share = (position + 1) / len(plan)
        if position == supplement_at:  # asked for more papers half-way to this step; the citizen takes days
            asked_share = (position + 0.5) / len(plan)
            asked = hours.add(anchor, span * (asked_share - anchor_share))
            steps.append((asked, "supplement"))
            resumed = hours.add(asked + rng.uniform(0.5, 4.0) * 86400, rng.uniform(5, 60) * 60)
            due += resumed - asked  # the citizen's days do not count against the agency
            steps.append((resumed, "processing"))
            due_changes.append((len(steps) - 1, text(due)))
            anchor, anchor_share = resumed, asked_share
        moment = hours.add(anchor, span * (share - anchor_share))
        if moment <= steps[-1][0]:
            moment = hours.add(steps[-1][0], rng.uniform(60, 600))
        steps.append((moment, status))
    return _Dossier(dossier_id, procedure.code, agency, level, channel, text(at), first_due, steps, due_changes)


def _surge(incident: Backlog, begin: float, finish: float, agencies: _Agencies, config: DossiersConfig,
           text: TimeText, new_id: Any) -> Iterator[_Dossier]:
    """The dossiers of one occurrence of a backlog surge (absolute times)."""
    code = incident.procedure or config.procedures[0].code
    level = agencies.level.get(incident.area) or "commune"
    due = text(begin + incident.due_in)
    arriving = (finish - begin) * 0.1
    for number in range(incident.count):
        received = begin + arriving * number / incident.count
        steps = [(received, "received"), (received + 60.0, "processing"), (finish + number * 0.5, "done")]
        yield _Dossier(new_id(incident.area, received), code, incident.area, level, "counter", text(received),
                       due, steps, [])
