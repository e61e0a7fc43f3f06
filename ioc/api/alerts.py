"""The operators' API (docs/http-api.md): alerts, acknowledgements, silences and KPIs.

Reading needs no token (the wall display reads these); every change needs an operator token
(`ioc.auth.require("operator")`: 401 without or with a bad token, 403 with a vendor's) and is written to
the audit log with the operator's name. Errors are `{"error": "..."}`: 400 bad input, 404 unknown id,
409 an action the alert's state does not allow, 413 an oversized body; never a 5xx for bad input.

Handlers that touch the alert manager are plain functions: FastAPI runs them in its thread pool, since
the manager takes a lock and writes SQLite.
"""

from __future__ import annotations

from typing import Annotated, Any, get_args

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ioc.alerts.active import LIST_STATES, ListState
from ioc.alerts.errors import AlertConflict, AlertNotFound, InvalidSilence, SilenceNotFound
from ioc.alerts.manager import AlertManager
from ioc.alerts.silence import STATUSES, SilenceRequest, SilenceStatus
from ioc.api.events import ErrorBody
from ioc.auth import Principal, require
from ioc.kpis import KpiBoard
from ioc.rules.updates import Severity

MAX_SILENCE_BODY = 64 * 1024
SEVERITIES: tuple[str, ...] = get_args(Severity)
Operator = Annotated[Principal, Depends(require("operator"))]

_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No or an unknown bearer token."},
    403: {"model": ErrorBody, "description": "Not an operator's token (e.g. a vendor's)."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "No such id."}}
_BAD: dict[int | str, dict[str, Any]] = {400: {"model": ErrorBody, "description": "A bad parameter, named."}}

_ALERT_EXAMPLE = {
    "id": "5f0c2d8e4b9a4f7e9c1d2a3b4c5d6e7f", "fingerprint": "9a1b2c3d4e5f6a7b", "rule": "aqi-bad",
    "severity": "critical", "state": "firing", "labels": {"area": "22723"},
    "summary": "Chất lượng không khí xấu tại 22723: VN_AQI 162",
    "summaries": {"vi": "Chất lượng không khí xấu tại 22723: VN_AQI 162",
                  "en": "Poor air quality in 22723: VN_AQI 162"}, "value": 162.0,
    "started_at": "2026-03-02T01:00:00+00:00", "fired_at": "2026-03-02T01:10:00+00:00", "resolved_at": None,
    "acknowledged": {"by": "truc-ban-1", "at": "2026-03-02T01:12:30+00:00"}, "silenced": False,
    "inhibited": False, "silenced_by": [], "runbook": None,
}
_SILENCE_EXAMPLE = {"matchers": [{"name": "area", "value": "22723", "op": "="},
                                 {"name": "rule", "value": "cell-down|coverage-outage", "op": "=~"}],
                    "starts_at": "2026-03-02T08:00:00+07:00", "ends_at": "2026-03-02T12:00:00+07:00",
                    "comment": "Bảo trì trạm BTN0123 (maintenance)", "author": "truc-ban-1"}


def _json(status: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _one_of(name: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value is not None and value not in allowed:
        raise HTTPException(400, f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return value


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its `$defs` put in place (for an `openapi_extra` request body)."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(dict(definitions[ref.removeprefix("#/$defs/")]))
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)  # type: ignore[no-any-return]


def alerts_router(manager: AlertManager) -> APIRouter:
    """`/api/v1/alerts...` and `/api/v1/silences...` over `manager`."""
    router = APIRouter(tags=["alerts"])

    @router.get("/api/v1/alerts", summary="List alerts", responses={
        200: {"content": {"application/json": {"example": [_ALERT_EXAMPLE]}}}, **_BAD},
        description="No `state`: the active alerts (pending and firing). `state=acknowledged`: the firing "
                    "ones that are acknowledged (they are also listed under `firing`). `state=resolved`: the "
                    "resolved ones kept, newest first. Most severe first.")
    def list_alerts(state: str | None = None, severity: str | None = None,
                    limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> Response:
        chosen: Any = _one_of("state", state, LIST_STATES)
        _one_of("severity", severity, SEVERITIES)
        listed: ListState | None = chosen
        return _json(200, [alert.as_json() for alert in manager.list(listed, severity, limit=limit)])

    @router.get("/api/v1/alerts/{alert_id}", summary="One alert", responses={
        200: {"content": {"application/json": {"example": _ALERT_EXAMPLE}}}, **_NOT_FOUND})
    def get_alert(alert_id: str) -> Response:
        try:
            return _json(200, manager.get(alert_id).as_json())
        except AlertNotFound as error:
            raise HTTPException(404, str(error)) from None

    _conflict: dict[int | str, dict[str, Any]] = {
        409: {"model": ErrorBody, "description": "The alert is not firing."}, **_NOT_FOUND, **_AUTH_ERRORS}

    @router.post("/api/v1/alerts/{alert_id}/ack", summary="Acknowledge a firing alert", responses=_conflict,
                 description="It stays `firing`, with `acknowledged: {by, at}`; the operator's token "
                             "names who.")
    def ack(alert_id: str, operator: Operator) -> Response:
        return _operator_action(manager.ack, alert_id, operator)

    @router.post("/api/v1/alerts/{alert_id}/unack", summary="Take an acknowledgement back",
                 responses=_conflict)
    def unack(alert_id: str, operator: Operator) -> Response:
        return _operator_action(manager.unack, alert_id, operator)

    @router.get("/api/v1/silences", summary="List silences", responses=_BAD,
                description="Every silence with its `id` and `status` (`pending`, `active`, `expired`); "
                            "expired ones stay listed for 5 days.")
    def list_silences(status: str | None = None) -> Response:
        chosen: Any = _one_of("status", status, STATUSES)
        wanted: SilenceStatus | None = chosen
        now = manager.now()
        return _json(200, [silence.as_json(now) for silence in manager.list_silences(wanted)])

    @router.get("/api/v1/silences/{silence_id}", summary="One silence", responses=_NOT_FOUND)
    def get_silence(silence_id: str) -> Response:
        try:
            return _json(200, manager.get_silence(silence_id).as_json(manager.now()))
        except SilenceNotFound as error:
            raise HTTPException(404, str(error)) from None

    silence_body = inline_refs(SilenceRequest.model_json_schema())
    request_body = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": silence_body, "example": _SILENCE_EXAMPLE}}}}

    @router.post("/api/v1/silences", summary="Create a silence", status_code=201, openapi_extra=request_body,
                 responses={201: {"content": {"application/json": {"example": {"id": "3c9f..."}}}},
                            413: {"model": ErrorBody, "description": "Body over 64 KiB."},
                            **_BAD, **_AUTH_ERRORS},
                 description="Matching alerts are muted from `starts_at` (default now) until `ends_at` (or "
                             "`starts_at` + `duration`, e.g. `\"2h\"`): still recorded and shown, not paged. "
                             "`op` is `=`, `!=`, `=~` or `!~` (regular expressions match the whole value). "
                             "`author` defaults to the operator.")
    async def create_silence(request: Request, operator: Operator) -> Response:
        body = await read_body(request, MAX_SILENCE_BODY)
        try:
            parsed = SilenceRequest.parse(body)
            silence = await run_in_threadpool(manager.create_silence, parsed, actor=operator.name)
        except InvalidSilence as error:
            raise HTTPException(400, str(error)) from None
        return _json(201, {"id": silence.id})

    @router.delete("/api/v1/silences/{silence_id}", summary="Expire a silence", status_code=204,
                   response_class=Response, responses={**_NOT_FOUND, **_AUTH_ERRORS},
                   description="It ends now and stays listed as `expired`; its alerts are unmuted.")
    def delete_silence(silence_id: str, operator: Operator) -> Response:
        try:
            manager.expire_silence(silence_id, actor=operator.name)
        except SilenceNotFound as error:
            raise HTTPException(404, str(error)) from None
        return Response(status_code=204)

    return router


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, or 413 as soon as it is known to be over `limit` bytes (never read whole)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"body is {length} bytes, over the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"body is over the limit of {limit}")
    return bytes(body)


def _operator_action(action: Any, alert_id: str, operator: Principal) -> Response:
    try:
        return _json(200, action(alert_id, operator.name).as_json())
    except AlertNotFound as error:
        raise HTTPException(404, str(error)) from None
    except AlertConflict as error:
        raise HTTPException(409, str(error)) from None


def kpis_router(board: KpiBoard) -> APIRouter:
    """`GET /api/v1/kpis?area=`: the latest value of every KPI series (of one area)."""
    router = APIRouter(tags=["kpis"])

    @router.get("/api/v1/kpis", summary="Current KPIs", responses={200: {"content": {"application/json": {
        "example": [{"kpi": "kpi.dossier.online_share", "area": "60", "level": "province", "value": 87.5,
                     "target": 90.0, "updated_at": "2026-03-02T01:00:00+00:00"}]}}}},
        description="Every derived indicator's latest value with its target (`null` when none), sorted by "
                    "area then metric; `area` keeps one area's.")
    def kpis(area: str | None = None) -> Response:
        return _json(200, [kpi.as_json() for kpi in board.latest(area)])

    return router
