"""The wall's map cells (ioc.web.cells): Voronoi cells cut to discs, from points alone; names for the map."""

from __future__ import annotations

import math

from ioc.web.cells import Cell, english_name, short_name, voronoi_cells


def inside(point: tuple[float, float], polygon: list[tuple[float, float]]) -> bool:
    """Whether `point` is inside the convex polygon (on the same side of every edge)."""
    signs = set()
    for a, b in zip(polygon, polygon[1:] + polygon[:1], strict=True):
        cross = (b[0] - a[0]) * (point[1] - a[1]) - (b[1] - a[1]) * (point[0] - a[0])
        if abs(cross) > 1e-9:
            signs.add(cross > 0)
    return len(signs) <= 1


def test_each_cell_holds_its_site_and_the_points_nearer_it_than_any_other() -> None:
    sites = [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0), (10.0, 10.0), (5.0, 5.0), (30.0, 2.0)]
    cells = voronoi_cells(sites)
    assert len(cells) == len(sites)
    for site, cell in zip(sites, cells, strict=True):
        assert len(cell) >= 3 and inside(site, cell)
    # Every probe point that lies in a cell is nearest (or as near) to that cell's site.
    for gx in range(-5, 36):
        for gy in range(-5, 16):
            probe = (gx + 0.37, gy + 0.61)
            owners = [i for i, cell in enumerate(cells) if inside(probe, cell)]
            if owners:
                nearest = min(math.dist(probe, s) for s in sites)
                assert all(math.dist(probe, sites[i]) <= nearest + 1e-6 for i in owners), probe
                assert len(owners) == 1, (probe, owners)


def test_cells_end_near_their_sites_and_an_island_is_a_disc() -> None:
    grid = [(float(x * 8), float(y * 8)) for x in range(6) for y in range(6)]
    island = (200.0, 200.0)
    cells = voronoi_cells([*grid, island])
    corner = cells[0]
    assert max(math.dist(p, grid[0]) for p in corner) <= 2 * 8 + 1e-6  # not out to the frame
    disc = cells[-1]
    radii = [math.dist(p, island) for p in disc]
    assert max(radii) - min(radii) < 1e-6 and max(radii) <= 2 * 8 + 1e-6  # capped: not a sea
    assert Cell("1", "x", 0, 0, tuple(disc)).area < math.pi * max(radii) ** 2


def test_two_sites_at_one_point_split_their_cell() -> None:
    cells = voronoi_cells([(0.0, 0.0), (0.0, 0.0), (20.0, 0.0)])
    assert all(len(cell) >= 3 for cell in cells)
    left, right = (Cell(str(i), "x", 0, 0, tuple(cells[i])).area for i in (0, 1))
    assert left > 0 and right > 0


def test_names_for_the_map_and_for_english() -> None:
    assert short_name("Phường Mũi Né") == "Mũi Né"
    assert short_name("Đặc khu Phú Quý") == "Phú Quý"
    assert short_name("Xã Đạ Huoai 2") == "Đạ Huoai 2"
    assert english_name("Tỉnh Lâm Đồng") == "Lam Dong Province"
    assert english_name("Thành phố Hồ Chí Minh") == "Ho Chi Minh City"
    assert english_name("Lâm Đồng") == "Lam Dong"
