"""`GET /api/v1/provinces/{code}/areas`: the public read a vendor (the simulators) takes area codes from."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from ioc.api.areas_api import areas_router
from ioc.areas import AreaRegistry


def client() -> TestClient:
    app = FastAPI()
    app.include_router(areas_router(AreaRegistry.national(["68"])))
    return TestClient(app)


def test_lam_dong_from_2025_has_its_124_communes_with_what_formed_them() -> None:
    rows = client().get("/api/v1/provinces/68/areas", params={"at": "2026-03-02"}).json()
    assert rows[0]["code"] == "68" and rows[0]["level"] == "province" and rows[0]["name"] == "Tỉnh Lâm Đồng"
    assert rows[0]["former_provinces"] == ["60", "67", "68"]  # Bình Thuận, Đắk Nông and the former Lâm Đồng
    communes = [row for row in rows if row["level"] == "commune"]
    assert len(communes) == 124 and all(row["parent"] == "68" for row in communes)
    mui_ne = next(row for row in rows if row["code"] == "22918")
    assert mui_ne["name"] == "Phường Mũi Né" and mui_ne["valid_from"] == "2025-07-01"
    assert "22915" in mui_ne["formed_from"] and mui_ne["former_provinces"] == ["60"]  # the former Mũi Né
    # The former Bình Thuận (60) went whole into 45 of them.
    assert sum("60" in row["former_provinces"] for row in communes) == 45


def test_before_the_reform_the_former_province_answers_with_its_districts() -> None:
    rows = client().get("/api/v1/provinces/60/areas", params={"at": "2025-06-30"}).json()
    assert rows[0]["code"] == "60" and rows[0]["valid_to"] == "2025-07-01"
    assert {row["level"] for row in rows} == {"province", "district", "commune"}
    assert all(row["formed_from"] == [] for row in rows)


def test_unknown_province_and_bad_date() -> None:
    api = client()
    assert api.get("/api/v1/provinces/60/areas", params={"at": "2026-01-01"}).status_code == 404  # merged
    assert api.get("/api/v1/provinces/22945/areas").status_code == 422  # not a province's code
    assert api.get("/api/v1/provinces/68/areas", params={"at": "2026-02-30"}).status_code == 400
