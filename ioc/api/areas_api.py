"""`GET /api/v1/provinces/{code}/areas`: one province's units as a vendor needs them (docs/http-api.md).

A vendor (the simulators are one: simulators/README.md) must send the codes the daemon knows. This route
is the public way to learn them: the province and every unit within it on a date, with names, levels,
parents, validity, coordinates and, for a unit of the 2025 reform, the former units that formed it (a
commune's former communes, a province's former provinces) and the former provinces they were in (CONTRACT
§10), so a vendor still holding former codes can map them.
`ioc sim areas` writes it as a scenario's areas file.
"""

from __future__ import annotations

import time
from datetime import date, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Response
from starlette.exceptions import HTTPException

from ioc.areas import REFORM_DAY, AreaRegistry, local_date
from ioc.areas.units import Area

__all__ = ["areas_router", "province_units"]

_EXAMPLE = [
    {"code": "68", "name": "Tỉnh Lâm Đồng", "level": "province", "parent": None, "valid_from": "2025-07-01",
     "valid_to": None, "lat": 11.6739, "lon": 107.968, "formed_from": ["60", "67", "68"],
     "former_provinces": ["60", "67", "68"]},
    {"code": "22945", "name": "Phường Phan Thiết", "level": "commune", "parent": "68",
     "valid_from": "2025-07-01", "valid_to": None, "lat": 10.9279, "lon": 108.097,
     "formed_from": ["22930", "22945", "22951"], "former_provinces": ["60"]},
]


def _day(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None


def province_units(areas: AreaRegistry, province: str, day: date) -> list[dict[str, Any]] | None:
    """The rows of `GET /api/v1/provinces/{province}/areas?at=day`; None when `province` is not a province
    on `day`."""
    top = areas.get(province, day)
    if top is None or top.level != "province":
        return None
    before = REFORM_DAY - timedelta(days=1)
    rows = []
    for area in areas.areas(day):
        if not areas.is_within(area.code, province, day):
            continue
        formed_from: list[Area] = areas.former_units(area.code) if day >= REFORM_DAY else []
        former_provinces = sorted({above.code for unit in formed_from  # the unit itself when a province
                                   for above in [unit, *areas.ancestors(unit.code, before)]
                                   if above.level == "province"})
        rows.append({"code": area.code, "name": area.name, "level": area.level, "parent": area.parent,
                     "valid_from": _day(area.valid_from), "valid_to": _day(area.valid_to),
                     "lat": area.lat, "lon": area.lon, "formed_from": [unit.code for unit in formed_from],
                     "former_provinces": former_provinces})
    return rows


def areas_router(areas: AreaRegistry) -> APIRouter:
    """The public read of one province's units over the daemon's registry."""
    router = APIRouter(tags=["areas"])

    @router.get("/api/v1/provinces/{code}/areas", summary="A province's units (for vendors)", responses={
        200: {"content": {"application/json": {"example": _EXAMPLE}}},
        400: {"description": "`at` is not a date."},
        404: {"description": "`code` is not a province the daemon serves on `at`."}},
        description="The province `code` and every unit within it valid on `at` (YYYY-MM-DD, default today "
                    "in Asia/Ho_Chi_Minh), in registry order: `code`, `name`, `level`, `parent`, "
                    "`valid_from`/`valid_to` (the unit's period, `valid_to` exclusive, null: open), `lat`/"
                    "`lon` (null where unknown) and, from 2025-07-01, `formed_from` (the former units "
                    "that went into it: communes, for a province its provinces) and `former_provinces` "
                    "(the provinces those were, or were in).")
    def province_areas(code: Annotated[str, Path(pattern=r"^[0-9]{2}$")],
                       at: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$")] = None) -> Response:
        try:
            day = date.fromisoformat(at) if at is not None else local_date(time.time())
        except ValueError:
            raise HTTPException(400, f"at: {at!r} is not a date (YYYY-MM-DD)") from None
        rows = province_units(areas, code, day)
        if rows is None:
            raise HTTPException(404, f"{code!r} is not a province served on {day.isoformat()}")
        return Response(orjson.dumps(rows), media_type="application/json")

    return router
