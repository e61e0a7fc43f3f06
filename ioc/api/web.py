"""The wall display's routes (docs/http-api.md `GET /`): the page, its static assets, and the small read-only
APIs it needs besides alerts, silences, KPIs and the stream.

- `GET /` the page (Vietnamese; `?lang=en` English), with the province's name filled in on the server so
  the first paint is right. Every asset comes from the package (`ioc/web/`): no CDN, no build step.
- `GET /static/{name}` the assets. The page links each with `?v=<content hash>`; such a request is
  cached for a year (`immutable`), any other gets `no-cache` and an `ETag` (304 on a match).
- `GET /api/v1/areas` the area registry as it is today: `code`, `name`, `level`, `parent`.
- `GET /api/v1/map` the province's communes as map cells drawn from their centres (`ioc.web.cells`).
- `GET /api/v1/sources` each subsystem's counters: from the pipeline (`received`, `accepted`, `rejected`,
  `duplicates`) and, when a `SourceWatch` runs in the evaluation thread, `rate` and `last_seen`.
- `GET /api/v1/telemetry?metric=env.aqi` the latest value of a watched metric per area (`SourceWatch`).
- `GET /api/v1/whoami` the operator a token belongs to, so the page can check a token before keeping it.
"""

from __future__ import annotations

import hashlib
import html
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib import resources
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.exceptions import HTTPException

from ioc.areas import AreaRegistry
from ioc.areas.dates import local_date
from ioc.auth import Principal, require
from ioc.ingest.pipeline import Pipeline
from ioc.web.cells import english_name, province_map
from ioc.web.watch import SourceWatch

LANGUAGES = ("vi", "en")
ASSET_SUFFIXES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                  ".svg": "image/svg+xml", ".html": "text/html; charset=utf-8"}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# The page runs only its own script and style, talks only to its own origin, and is never framed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": REVALIDATE,
}
TITLES = {"vi": "Trung tâm Điều hành thông minh", "en": "Intelligent Operations Center"}
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)(?::([\w.-]+))?\s*\}\}")


@dataclass(frozen=True, slots=True)
class Asset:
    """One packaged file: its bytes, media type and content hash (the `ETag` and the `?v=`)."""

    name: str
    body: bytes
    media_type: str
    digest: str

    @property
    def etag(self) -> str:
        return f'"{self.digest}"'


def load_assets() -> dict[str, Asset]:
    """Every servable file of `ioc/web/` by name (a fixed set read once: nothing else can be reached)."""
    assets: dict[str, Asset] = {}
    for entry in resources.files("ioc.web").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in ASSET_SUFFIXES:
            body = entry.read_bytes()
            assets[entry.name] = Asset(entry.name, body, ASSET_SUFFIXES[suffix],
                                       hashlib.sha256(body).hexdigest()[:16])
    return assets


def default_province(areas: AreaRegistry, at: date | None = None) -> str:
    """The code of the registry's top unit (the province) on `at`; the first one if there are several."""
    roots = [area for area in areas.areas(at) if area.parent is None]
    if not roots:
        raise ValueError("the area registry has no top-level area")
    return roots[0].code


def _rfc3339(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class _CounterRates:
    """Rates from the pipeline's `received` counters when no `SourceWatch` runs: each request compares
    the counts with those of a sample at least a few seconds old (the page polls every few seconds)."""

    def __init__(self, pipeline: Pipeline, *, min_age: float = 5.0, max_age: float = 120.0) -> None:
        self._pipeline = pipeline
        self._min_age = min_age
        self._max_age = max_age
        self._samples: list[tuple[float, dict[str, int]]] = []
        self._lock = threading.Lock()

    def rates(self) -> dict[str, float]:
        now = time.monotonic()
        counts = {source: count for (source,), count in self._pipeline.received.copy().items()}
        with self._lock:
            self._samples = [(at, old) for at, old in self._samples if now - at <= self._max_age]
            base = next(((at, old) for at, old in self._samples if now - at >= self._min_age), None)
            if not self._samples or now - self._samples[-1][0] >= self._min_age:
                self._samples.append((now, counts))
        if base is None:
            return {}
        at, old = base
        return {source: max(0.0, (count - old.get(source, 0)) / (now - at))
                for source, count in counts.items()}


def render_page(template: str, assets: dict[str, Asset], *, lang: str, province_code: str,
                province_name: str) -> str:
    """`index.html` with its `{{ name }}` placeholders filled (values HTML-escaped) and each
    `{{ asset:NAME }}` replaced by the asset's versioned URL."""
    values = {"lang": lang, "title": TITLES[lang], "province": province_name, "province_code": province_code}

    def fill(match: re.Match[str]) -> str:
        name, argument = match.group(1), match.group(2)
        if name == "asset":
            asset = assets[argument]
            return f"/static/{asset.name}?v={asset.digest}"
        return html.escape(values[name], quote=True)

    return _PLACEHOLDER.sub(fill, template)


def web_router(areas: AreaRegistry, province: str, *, pipeline: Pipeline | None = None,
               watch: SourceWatch | None = None) -> APIRouter:
    """The wall display over `areas`. `province` is the code of the province's area in the registry
    (`default_province(areas)`); a string the registry does not know is shown as the name itself.
    `pipeline` gives `/api/v1/sources` its counters; `watch` (a stage of the evaluation thread) its
    `rate` and `last_seen`, and `/api/v1/telemetry` its readings."""
    assets = load_assets()
    template = assets["index.html"].body.decode("utf-8")
    area = areas.get(province)
    province_name = area.name if area is not None else province
    names = {"vi": province_name, "en": english_name(province_name)}
    pages = {lang: render_page(template, assets, lang=lang, province_code=province,
                               province_name=names[lang]).encode("utf-8") for lang in LANGUAGES}
    maps: dict[date, bytes] = {}  # the map of a day (the registry changes by date only; a few days kept)
    maps_lock = threading.Lock()
    counter_rates = _CounterRates(pipeline) if pipeline is not None and watch is None else None
    router = APIRouter(tags=["wall display"])

    @router.get("/", summary="The wall display", response_class=Response,
                responses={200: {"content": {"text/html": {}}}},
                description="The operations-center wall (HTML). Vietnamese by default; `?lang=en` English.")
    def page(lang: str = "vi") -> Response:
        chosen = lang if lang in LANGUAGES else "vi"
        return Response(pages[chosen], media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @router.get("/static/{name}", summary="A packaged asset of the wall display", include_in_schema=False)
    def static(name: str, request: Request, v: str | None = None) -> Response:
        asset = assets.get(name)
        if asset is None or name == "index.html":
            raise HTTPException(404, f"not found: /static/{name}")
        cache = IMMUTABLE if v == asset.digest else REVALIDATE
        headers = {"ETag": asset.etag, "Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
        if asset.etag in request.headers.get("if-none-match", "").replace("W/", "").split(", "):
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    @router.get("/api/v1/areas", summary="The area registry", responses={200: {"content": {
        "application/json": {"example": [{"code": "22723", "name": "Phường Phan Thiết", "level": "commune",
                                          "parent": "60"}]}}}},
        description="Every area valid on `at` (YYYY-MM-DD, default today in Asia/Ho_Chi_Minh), in file "
                    "order.")
    def list_areas(at: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$")] = None) -> Response:
        day: date | None = None
        if at is not None:
            try:
                day = date.fromisoformat(at)
            except ValueError:
                raise HTTPException(400, f"at: {at!r} is not a date (YYYY-MM-DD)") from None
        return _json([{"code": a.code, "name": a.name, "level": a.level, "parent": a.parent}
                      for a in areas.areas(day)])

    @router.get("/api/v1/map", summary="The province's map for the wall", responses={200: {"content": {
        "application/json": {"example": {
            "province": "68", "name": "Tỉnh Lâm Đồng", "name_en": "Lam Dong Province", "level": "commune",
            "bounds": [-94.44, -142.3, 126.75, 138.51], "unplaced": [],
            "cells": [{"code": "22918", "name": "Phường Mũi Né", "short": "Mũi Né", "x": 51.2, "y": 97.5,
                       "area": 101.3, "points": [[55.1, 92.0], [58.3, 99.9], [49.0, 103.2]]}]}}}}},
        description="The served province's lowest units on `at` (YYYY-MM-DD, default today in "
                    "Asia/Ho_Chi_Minh), each as the polygon of the points closer to its centre than to any "
                    "other's, cut to a disc around it (the registry has centres, not boundaries). "
                    "Kilometres, x east and y south of the units' mean centre; `bounds` is "
                    "[min x, min y, max x, max y]. Units without coordinates are `unplaced`.")
    def province_cells(at: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$")] = None) -> Response:
        try:
            day = date.fromisoformat(at) if at is not None else local_date(time.time())
        except ValueError:
            raise HTTPException(400, f"at: {at!r} is not a date (YYYY-MM-DD)") from None
        with maps_lock:
            body = maps.get(day)
            if body is None:
                body = orjson.dumps(province_map(areas, province, day))
                if len(maps) >= 8:
                    maps.pop(next(iter(maps)))
                maps[day] = body
        return Response(body, media_type="application/json")

    @router.get("/api/v1/sources", summary="Subsystems (event sources) and their intake", responses={
        200: {"content": {"application/json": {"example": [{
            "source": "qtmt-aqi", "received": 1200, "accepted": 1198, "rejected": 2, "duplicates": 0,
            "rate": 3.5, "last_seen": "2026-03-02T01:00:00+00:00",
            "last_event_time": "2026-03-02T00:59:58+00:00"}]}}}},
        description="Per source: the pipeline's counters since start; `rate` (events/s over the last "
                    "minute); `last_seen` (when its last accepted event arrived) and `last_event_time` "
                    "(that event's own time), null when not known.")
    def list_sources() -> Response:
        rows: dict[str, dict[str, Any]] = {}

        def row(source: str) -> dict[str, Any]:
            return rows.setdefault(source, {"source": source, "received": 0, "accepted": 0, "rejected": 0,
                                            "duplicates": 0, "rate": None, "last_seen": None,
                                            "last_event_time": None})

        if pipeline is not None:
            for (source,), count in pipeline.received.copy().items():
                row(source)["received"] = count
            for (source,), count in pipeline.accepted.copy().items():
                row(source)["accepted"] = count
            for (source,), count in pipeline.duplicates.copy().items():
                row(source)["duplicates"] = count
            for (source, _reason), count in pipeline.rejected.copy().items():
                row(source)["rejected"] += count
        if counter_rates is not None:
            for source, rate in counter_rates.rates().items():
                row(source)["rate"] = round(rate, 3)
        if watch is not None:
            for stat in watch.sources():
                found = row(stat.source)
                found.update(rate=round(stat.rate, 3), last_seen=_rfc3339(stat.last_seen),
                             last_event_time=_rfc3339(stat.last_event_time))
                if pipeline is None:
                    found["accepted"] = stat.events
        return _json([rows[source] for source in sorted(rows)])

    @router.get("/api/v1/telemetry", summary="Latest readings of watched metrics", responses={
        200: {"content": {"application/json": {"example": [{
            "metric": "env.aqi", "area": "22723", "source": "qtmt-aqi", "value": 162.0,
            "time": "2026-03-02T01:00:00+00:00"}]}}}},
        description="The latest value per area of each metric the daemon watches for the wall (`env.aqi`); "
                    "`metric` keeps one. Empty when no watch runs.")
    def telemetry(metric: str | None = None) -> Response:
        readings = watch.readings(metric) if watch is not None else []
        return _json([{"metric": r.metric, "area": r.area, "source": r.source, "value": r.value,
                       "time": _rfc3339(r.time)} for r in readings])

    @router.get("/api/v1/whoami", summary="Whose operator token this is", responses={
        200: {"content": {"application/json": {"example": {"name": "truc-ban-1", "kind": "operator"}}}},
        401: {"description": "No or an unknown bearer token."},
        403: {"description": "Not an operator's token."}})
    def whoami(operator: Annotated[Principal, Depends(require("operator"))]) -> Response:
        return _json({"name": operator.name, "kind": operator.kind})

    return router
