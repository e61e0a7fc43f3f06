"""The wall's map of a province's communes, drawn from their centres alone (the registry has points, not
boundaries): each commune gets the part of the plane closer to its centre than to any other (its Voronoi
cell), cut to a disc around its centre so that the cells along the edge, and an island, end near their
communes instead of running off to the frame. Coordinates are kilometres on a local equirectangular
projection, x east and y south (SVG's axes), so the page draws them with one viewBox and no maths.

Pure functions: `web_router` serves `province_map` as `GET /api/v1/map`, cached per day."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from ioc.areas import AreaRegistry
from ioc.areas.units import Area

__all__ = ["Cell", "english_name", "province_map", "short_name", "voronoi_cells"]

KM_PER_DEGREE_LAT = 110.57
KM_PER_DEGREE_LON = 111.32
DISC_SIDES = 40
# A cell reaches at most REACH_FACTOR times the distance to its centre's 3rd nearest neighbour (and at
# least REACH_FLOOR times the province's median nearest-neighbour distance): dense towns keep small cells,
# sparse uplands larger ones, and the outline follows where the communes are...
# ...and at most REACH_CAP times that median: an island far offshore is a disc, not a sea.
REACH_NEIGHBOURS = 3
REACH_FACTOR = 0.85
REACH_FLOOR = 0.9
REACH_CAP = 2.0

_PREFIXES = re.compile(r"^(Phường|Xã|Thị trấn|Đặc khu|Thị xã|Quận|Huyện|Thành phố|Tỉnh)\s+")
_PROVINCE_PREFIX = re.compile(r"^(Tỉnh|Thành phố)\s+")

Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Cell:
    code: str
    name: str
    x: float
    y: float
    polygon: tuple[Point, ...]

    @property
    def area(self) -> float:
        """The polygon's area (km²), by the shoelace formula."""
        points = self.polygon
        twice = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(points, points[1:] + points[:1], strict=True))
        return abs(twice) / 2


def short_name(name: str) -> str:
    """A unit's name without its kind ("Phường Mũi Né" -> "Mũi Né"): what fits on a map."""
    return _PREFIXES.sub("", name, count=1)


def english_name(name: str) -> str:
    """A province's name as English text writes it: unaccented, with the kind after it
    ("Tỉnh Lâm Đồng" -> "Lam Dong Province", "Thành phố Huế" -> "Hue City"). The open data has no
    English names; this is the form Vietnam's own English documents use."""
    match = _PROVINCE_PREFIX.match(name)
    bare = _PROVINCE_PREFIX.sub("", name, count=1)
    plain = unicodedata.normalize("NFD", bare.replace("Đ", "D").replace("đ", "d"))
    plain = "".join(char for char in plain if not unicodedata.combining(char))
    if match is None:
        return plain
    return f"{plain} {'Province' if match.group(1) == 'Tỉnh' else 'City'}"


def _clip(polygon: list[Point], a: float, b: float, c: float) -> list[Point]:
    """The part of a convex polygon where a*x + b*y <= c (Sutherland-Hodgman against one half-plane)."""
    out: list[Point] = []
    count = len(polygon)
    for index in range(count):
        p, q = polygon[index], polygon[(index + 1) % count]
        fp, fq = a * p[0] + b * p[1] - c, a * q[0] + b * q[1] - c
        if fp <= 0:
            out.append(p)
        if (fp < 0 < fq) or (fq < 0 < fp):
            t = fp / (fp - fq)
            out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
    return out


def _reaches(sites: Sequence[Point]) -> list[float]:
    if len(sites) < 2:
        return [10.0] * len(sites)
    distances = [sorted(math.dist(p, q) for j, q in enumerate(sites) if j != i) for i, p in enumerate(sites)]
    nearest = sorted(d[0] for d in distances if d[0] > 0) or [10.0]  # centres given twice count once
    median = nearest[len(nearest) // 2]
    return [min(REACH_CAP * median, max(REACH_FLOOR * median, REACH_FACTOR * d[min(REACH_NEIGHBOURS, len(d)) - 1]))
            for d in distances]


def voronoi_cells(sites: Sequence[Point]) -> list[list[Point]]:
    """Each site's Voronoi cell cut to a disc around it (a polygon of DISC_SIDES sides), in site order.
    Two sites at the same point split their cell in halves along an arbitrary line. O(n²): n is a
    province's communes (a few hundred at most)."""
    reaches = _reaches(sites)
    cells: list[list[Point]] = []
    for i, (x, y) in enumerate(sites):
        r = reaches[i]
        polygon = [(x + r * math.cos(2 * math.pi * k / DISC_SIDES), y + r * math.sin(2 * math.pi * k / DISC_SIDES))
                   for k in range(DISC_SIDES)]
        for j, (u, v) in enumerate(sites):
            if j == i or not polygon:
                continue
            dx, dy = u - x, v - y
            if dx == 0 and dy == 0:  # the same point: the lower index takes the left half
                dx, dy = (1.0, 0.0) if i < j else (-1.0, 0.0)
            elif math.hypot(dx, dy) > 2 * r:  # the bisector is beyond the disc
                continue
            # closer to (x, y) than to (u, v): (p - m) . (d) <= 0 with m the midpoint
            mx, my = (x + u) / 2, (y + v) / 2
            polygon = _clip(polygon, dx, dy, dx * mx + dy * my)
        cells.append(polygon)
    return cells


def project(areas: Sequence[Area]) -> list[Point]:
    """Each area's centre in km from the areas' mean, x east, y south."""
    lat0 = sum(a.lat for a in areas if a.lat is not None) / max(1, len(areas))
    lon0 = sum(a.lon for a in areas if a.lon is not None) / max(1, len(areas))
    scale = math.cos(math.radians(lat0)) * KM_PER_DEGREE_LON
    return [((a.lon - lon0) * scale, -(a.lat - lat0) * KM_PER_DEGREE_LAT)  # type: ignore[operator]
            for a in areas]


def lowest_units(registry: AreaRegistry, province: str, day: date | None) -> list[Area]:
    """The units of the lowest level under `province` on `day` (communes, in registry order)."""
    under = [a for a in registry.areas(day) if a.code != province and registry.is_within(a.code, province, day)]
    if not under:
        return []
    lowest = max(under, key=lambda a: ("province", "district", "commune").index(a.level)).level
    return [a for a in under if a.level == lowest]


def province_map(registry: AreaRegistry, province: str, day: date | None = None) -> dict[str, object]:
    """The body of `GET /api/v1/map`: the province, the bounding box of its cells and each placed unit's
    cell (`points`, rounded to 10 m), centre and names; units without coordinates are `unplaced`."""
    units = lowest_units(registry, province, day)
    placed = [a for a in units if a.lat is not None and a.lon is not None]
    cells = [Cell(a.code, a.name, x, y, tuple(polygon)) for a, (x, y), polygon in
             zip(placed, project(placed), voronoi_cells(project(placed)), strict=True)]
    xs = [p[0] for cell in cells for p in cell.polygon] or [0.0]
    ys = [p[1] for cell in cells for p in cell.polygon] or [0.0]
    top = registry.get(province, day)
    name = top.name if top is not None else province
    return {
        "province": province,
        "name": name,
        "name_en": english_name(name),
        "level": placed[0].level if placed else None,
        "bounds": [round(min(xs), 2), round(min(ys), 2), round(max(xs), 2), round(max(ys), 2)],
        "cells": [{"code": c.code, "name": c.name, "short": short_name(c.name), "x": round(c.x, 2),
                   "y": round(c.y, 2), "area": round(c.area, 1),
                   "points": [[round(px, 2), round(py, 2)] for px, py in c.polygon]} for c in cells],
        "unplaced": [{"code": a.code, "name": a.name, "short": short_name(a.name)}
                     for a in units if a.lat is None or a.lon is None],
    }
