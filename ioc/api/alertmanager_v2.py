"""Alertmanager's API v2 on the daemon (CONTRACT §9), so `amtool`, Grafana's Alertmanager data source and
karma work against it unchanged. Alertmanager's OpenAPI spec (`api/v2/openapi.yaml`) gives the shapes.

- `GET /api/v2/alerts`: the firing alerts (an Alertmanager holds no pending ones: Prometheus never sends
  them) as `gettableAlert`s, in the labels and annotations `ioc.alerts.alertmanager_push` posts to a real
  Alertmanager (`alertname` = the rule id, `severity`, the group labels; `summary`, `value`, ...).
  `status.state` is `suppressed` while a silence (`silencedBy`: silence ids) or an inhibition rule
  (`inhibitedBy`: the inhibiting alert's fingerprint) mutes it, else `active`. Query as Alertmanager's:
  `filter` (repeated matchers, `alertname="x"`, `severity=~"c.*"`), `active`, `silenced`, `inhibited`,
  `unprocessed` (booleans, default true), `receiver` (a regular expression).
- `GET /api/v2/alerts/groups`: the same alerts grouped by `alertname` (the daemon's one route).
- `GET|POST /api/v2/silences`, `GET|DELETE /api/v2/silence/{id}`: the daemon's one set of silences (the
  ones of `/api/v1/silences`, same ids). A POST with the `id` of an existing silence updates it as
  Alertmanager does (in place, or expired and replaced by a new one: `ioc.alerts.silence`).
- `GET /api/v2/status` (clustering `disabled`; `versionInfo.version` the Alertmanager API followed, 0.25.0;
  `config.original` the routing and inhibition rules as Alertmanager YAML), `GET /api/v2/receivers`.

Reads are open as `/api/v1`'s are (`[http] public_read`); a change needs an operator's bearer token (401
without, 403 with another kind), as `/api/v1`'s operator actions. A bad request (400) or an unknown id
(404) is answered in Alertmanager's shape, the reason as a JSON string, so amtool shows it; the daemon's
own refusals (401, 403, 413, 422) keep its `{"error": "..."}`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import orjson
import yaml
from fastapi import APIRouter, Query, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ioc import __version__
from ioc.alerts.alert import Alert
from ioc.alerts.alertmanager_push import am_alert, am_time
from ioc.alerts.config import AlertsSettings
from ioc.alerts.errors import InvalidSilence, SilenceNotFound
from ioc.alerts.manager import AlertManager
from ioc.alerts.silence import Silence, SilenceRequest
from ioc.alerts.silence_request import SilenceTime, describe
from ioc.api.alerts import MAX_SILENCE_BODY, Operator, inline_refs, read_body
from ioc.api.events import ErrorBody
from ioc.matchers import Matcher, matches_all, parse_matcher
from ioc.regex import compile_regex, fullmatches

# `versionInfo.version`: the Alertmanager release whose API this one follows (and whose amtool the tests
# run). Clients pick their API by it: karma has no mapper for a version below 0.17 (the daemon's own 0.1.0),
# and amtool warns when it differs from its own. The daemon's version is in `revision`.
API_VERSION = "0.25.0"
RECEIVER = "ioc"  # the one receiver: the daemon's own notifiers (webhooks, MQTT, ...) behind one route
VALID_FOR = 300.0  # seconds a listed firing alert's `endsAt` lies ahead (Alertmanager's resolve_timeout)
_STATE_ORDER = {"active": 0, "pending": 1, "expired": 2}

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"content": {"application/json": {"schema": {"type": "string"}}},
          "description": "A bad silence, the field named (a JSON string, as Alertmanager answers)."},
    401: {"model": ErrorBody, "description": "No or an unknown bearer token."},
    403: {"model": ErrorBody, "description": "Not an operator's token."},
    404: {"content": {"application/json": {"schema": {"type": "string"}}},
          "description": "No silence with the `id` given (a JSON string)."},
    413: {"model": ErrorBody, "description": "Body over 64 KiB."}}
_SILENCE_EXAMPLE = {"matchers": [{"name": "alertname", "value": "cell-down", "isRegex": False, "isEqual": True},
                                 {"name": "area", "value": "227.*", "isRegex": True, "isEqual": True}],
                    "startsAt": "2026-03-02T01:00:00.000Z", "endsAt": "2026-03-02T05:00:00.000Z",
                    "createdBy": "truc-ban-1", "comment": "Bảo trì trạm BTN0123 (maintenance)"}

Flag = Annotated[bool, Query()]
Filter = Annotated[list[str] | None, Query(description='Matchers such as `alertname="aqi-bad"`.')]


class V2Matcher(BaseModel):
    """Alertmanager's `matcher` (its camelCase field names): `isRegex`, `isEqual` (default true)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    name: str
    value: str
    isRegex: bool
    isEqual: bool = True

    @property
    def op(self) -> str:
        if self.isRegex:
            return "=~" if self.isEqual else "!~"
        return "=" if self.isEqual else "!="


class PostableSilence(BaseModel):
    """Alertmanager's `postableSilence`; unknown keys are ignored, as Alertmanager does."""

    model_config = ConfigDict(extra="ignore")

    id: Annotated[str, Field(max_length=256, strict=True)] | None = None
    matchers: Annotated[list[V2Matcher], Field(min_length=1, max_length=64)]
    startsAt: SilenceTime
    endsAt: SilenceTime
    createdBy: Annotated[str, Field(max_length=256, strict=True)] = ""
    comment: Annotated[str, Field(max_length=4096, strict=True)] = ""

    def request(self) -> SilenceRequest:
        """The silence request both APIs share (InvalidSilence: a matcher that cannot be built)."""
        return SilenceRequest.parse({
            "matchers": [{"name": m.name, "value": m.value, "op": m.op} for m in self.matchers],
            "starts_at": self.startsAt, "ends_at": self.endsAt, "comment": self.comment,
            "author": self.createdBy or None})


def silence_json(silence: Silence, now: float) -> dict[str, Any]:
    """A silence as Alertmanager's `gettableSilence`."""
    return {
        "id": silence.id,
        "status": {"state": silence.status(now)},
        "updatedAt": am_time(silence.updated_at),
        "comment": silence.comment,
        "createdBy": silence.author,
        "startsAt": am_time(silence.starts_at),
        "endsAt": am_time(silence.ends_at),
        "matchers": [{"name": m.name, "value": m.value, "isRegex": m.op in ("=~", "!~"),
                      "isEqual": m.op in ("=", "=~")} for m in silence.matchers],
    }


def alert_json(alert: Alert, now: float) -> dict[str, Any]:
    """A firing alert as Alertmanager's `gettableAlert` (its labels and annotations as pushed)."""
    body = am_alert(alert, now=now, valid_for=VALID_FOR)
    silenced_by = list(alert.silenced_by)
    inhibited_by = [alert.inhibited_by] if alert.inhibited_by else []
    body.update({
        "fingerprint": alert.fingerprint,
        "receivers": [{"name": RECEIVER}],
        "updatedAt": am_time(max(alert.updated_at, alert.fired_at or alert.started_at)),
        "status": {"state": "suppressed" if alert.silenced else "active", "silencedBy": silenced_by,
                   "inhibitedBy": inhibited_by, "mutedBy": []},
    })
    return body


def config_yaml(settings: AlertsSettings) -> str:
    """`config.original` of the status: the daemon's routing as an Alertmanager config (one receiver,
    grouped by `alertname`) with its inhibition rules (`within_area` has no Alertmanager form)."""
    inhibit = [{"source_matchers": [str(spec.build()) for spec in rule.source_matchers],
                "target_matchers": [str(spec.build()) for spec in rule.target_matchers],
                "equal": list(rule.equal)} for rule in settings.inhibit]
    config: dict[str, Any] = {"route": {"receiver": RECEIVER, "group_by": ["alertname"]},
                              "receivers": [{"name": RECEIVER}]}
    if inhibit:
        config["inhibit_rules"] = inhibit
    return str(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _matchers(filters: list[str] | None) -> list[Matcher]:
    try:
        return [parse_matcher(text) for text in filters or ()]
    except ValueError as error:
        raise HTTPException(400, f"filter: {error}") from None


def _receiver_matches(receiver: str | None) -> bool:
    """Whether the one receiver's name matches the `receiver` query (anchored, RE2); empty: any."""
    if not receiver:
        return True
    try:
        return fullmatches(compile_regex(receiver), RECEIVER)
    except ValueError as error:
        raise HTTPException(400, f"receiver: {error}") from None


class AlertmanagerRoute(APIRoute):
    """A route that answers its own 400 and 404 as Alertmanager does: the reason as a JSON string (the
    body amtool's client reads and shows)."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)  # type: ignore[no-any-return]
            except HTTPException as error:
                if error.status_code not in (400, 404):
                    raise
                return _json(str(error.detail), error.status_code)

        return handle


AlertFilter = Callable[[Alert], bool]


def _alert_filter(filters: list[str] | None, *, active: bool, silenced: bool, inhibited: bool,
                  now: float) -> AlertFilter:
    """Alertmanager's `alertFilter`: the matchers hold on the listed labels, and the state is wanted."""
    matchers = _matchers(filters)

    def wanted(alert: Alert) -> bool:
        if not alert.silenced and not active:
            return False
        if alert.silenced_by and not silenced:
            return False
        if alert.inhibited_by and not inhibited:
            return False
        return matches_all(matchers, am_alert(alert, now=now, valid_for=0)["labels"])

    return wanted


def alertmanager_v2_router(manager: AlertManager, settings: AlertsSettings, *,
                           clock: Callable[[], float] = time.time) -> APIRouter:
    """The `/api/v2/...` routes over `manager`; `uptime` counts from when the router is made."""
    router = APIRouter(tags=["alertmanager-v2"], route_class=AlertmanagerRoute)
    started = clock()
    original = config_yaml(settings)

    def firing(wanted: AlertFilter) -> list[Alert]:
        return [alert for alert in manager.list("firing", limit=100_000) if wanted(alert)]

    @router.get("/api/v2/alerts", summary="Firing alerts (Alertmanager's shape)")
    def get_alerts(filter: Filter = None, active: Flag = True, silenced: Flag = True,
                   inhibited: Flag = True, unprocessed: Flag = True, receiver: str | None = None) -> Response:
        now = manager.now()
        wanted = _alert_filter(filter, active=active, silenced=silenced, inhibited=inhibited, now=now)
        if not _receiver_matches(receiver):
            return _json([])
        alerts = sorted(firing(wanted), key=lambda alert: alert.fingerprint)
        return _json([alert_json(alert, now) for alert in alerts])

    @router.get("/api/v2/alerts/groups", summary="Firing alerts grouped by alertname")
    def get_groups(filter: Filter = None, active: Flag = True, silenced: Flag = True,
                   inhibited: Flag = True, muted: Flag = True, receiver: str | None = None) -> Response:
        now = manager.now()
        wanted = _alert_filter(filter, active=active, silenced=silenced, inhibited=inhibited, now=now)
        if not _receiver_matches(receiver):
            return _json([])
        groups: dict[str, list[dict[str, Any]]] = {}
        for alert in sorted(firing(wanted), key=lambda alert: alert.fingerprint):
            groups.setdefault(alert.rule, []).append(alert_json(alert, now))
        return _json([{"labels": {"alertname": rule}, "receiver": {"name": RECEIVER}, "alerts": alerts}
                      for rule, alerts in sorted(groups.items())])

    @router.get("/api/v2/silences", summary="Silences (Alertmanager's shape)")
    def get_silences(filter: Filter = None) -> Response:
        matchers = _matchers(filter)
        now = manager.now()
        found = [silence for silence in manager.list_silences() if _has_all(silence, matchers)]
        found.sort(key=lambda s: _silence_order(s, now))
        return _json([silence_json(silence, now) for silence in found])

    body_schema = inline_refs(PostableSilence.model_json_schema())
    request_body = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": body_schema, "example": _SILENCE_EXAMPLE}}}}

    @router.post("/api/v2/silences", summary="Create or update a silence (Alertmanager's shape)",
                 openapi_extra=request_body,
                 responses={200: {"content": {"application/json": {"example": {"silenceID": "3c9f..."}}}},
                            **_ERRORS},
                 description="Without `id`: a new silence. With the `id` of an existing silence: updated in "
                             "place when the matchers are the same and the times may still change, else it "
                             "is expired and a new silence (a new id) takes its place, as in Alertmanager.")
    async def post_silence(request: Request, operator: Operator) -> Response:
        body = await read_body(request, MAX_SILENCE_BODY)
        try:
            posted = PostableSilence.model_validate_json(body)
            silence = await run_in_threadpool(manager.create_silence, posted.request(), actor=operator.name,
                                              silence_id=posted.id or None)
        except ValidationError as error:
            raise HTTPException(400, describe(error)) from None
        except InvalidSilence as error:
            raise HTTPException(400, str(error)) from None
        except SilenceNotFound as error:
            raise HTTPException(404, str(error)) from None
        return _json({"silenceID": silence.id})

    @router.get("/api/v2/silence/{silence_id}", summary="One silence (Alertmanager's shape)")
    def get_silence(silence_id: str) -> Response:
        try:
            return _json(silence_json(manager.get_silence(silence_id), manager.now()))
        except SilenceNotFound as error:
            raise HTTPException(404, str(error)) from None

    @router.delete("/api/v2/silence/{silence_id}", summary="Expire a silence", response_class=Response)
    def delete_silence(silence_id: str, operator: Operator) -> Response:
        try:
            manager.expire_silence(silence_id, actor=operator.name)
        except SilenceNotFound as error:
            raise HTTPException(404, str(error)) from None
        return Response(status_code=200)

    @router.get("/api/v2/status", summary="Status (Alertmanager's shape; clustering disabled)")
    def get_status() -> Response:
        return _json({"cluster": {"status": "disabled", "peers": []},
                      "versionInfo": {"version": API_VERSION, "revision": f"ioc {__version__}",
                                      "branch": "ioc", "buildUser": "", "buildDate": "", "goVersion": ""},
                      "config": {"original": original}, "uptime": am_time(started)})

    @router.get("/api/v2/receivers", summary="Receivers (the daemon's one)")
    def get_receivers() -> Response:
        return _json([{"name": RECEIVER}])

    return router


def _has_all(silence: Silence, matchers: list[Matcher]) -> bool:
    """Alertmanager's silence filter: every filter matcher is one of the silence's (name, type, value)."""
    return all(any(m.name == f.name and m.op == f.op and m.value == f.value for m in silence.matchers)
               for f in matchers)


def _silence_order(silence: Silence, now: float) -> tuple[int, float]:
    """Alertmanager's order: active (ending soonest first), pending (starting soonest), expired (latest)."""
    state: Literal["pending", "active", "expired"] = silence.status(now)
    key = silence.ends_at if state == "active" else silence.starts_at if state == "pending" else -silence.ends_at
    return _STATE_ORDER[state], key
