"""The wall display's routes (`ioc.api.web`) and `SourceWatch`, without a browser: the page and its
languages, the assets and their caching, the areas, sources, telemetry and whoami APIs."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ioc.api.app import _http_error, _validation_error
from ioc.api.web import default_province, load_assets, web_router
from ioc.areas import registry_from_settings
from ioc.auth import Authenticator
from ioc.config import AreasSettings, Settings, token_sha256
from ioc.envelope import EVENT_ADAPTER
from ioc.ingest.dedup import DedupIndex
from ioc.ingest.pipeline import Pipeline
from ioc.web import SourceWatch

OPERATOR, VENDOR = "token-operator", "token-vendor"


def event(
    source: str, value: float, *, area: str = "22945", metric: str = "env.aqi", when: str | None = None
) -> object:
    return EVENT_ADAPTER.validate_json(
        orjson.dumps(
            {
                "id": f"{source}-{value}",
                "source": source,
                "type": "telemetry",
                "metric": metric,
                "value": value,
                "area": area,
                "time": when or datetime.now(UTC).isoformat(),
            }
        )
    )


def make_client(
    *, pipeline: Pipeline | None = None, watch: SourceWatch | None = None, province: str | None = None
) -> TestClient:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    settings = Settings.model_validate(
        {
            "vendors": [{"name": "qtmt", "token_sha256": token_sha256(VENDOR), "sources": ["qtmt-aqi"]}],
            "operators": [{"name": "truc-ban-1", "token_sha256": token_sha256(OPERATOR)}],
        }
    )
    app = FastAPI(exception_handlers={HTTPException: _http_error, RequestValidationError: _validation_error})
    app.state.authenticator = Authenticator(settings)
    areas = registry_from_settings(AreasSettings(provinces=["68"]))  # the demo's province, Lâm Đồng
    app.include_router(web_router(areas, province or default_province(areas), pipeline=pipeline, watch=watch))
    return TestClient(app)


def test_the_page_is_vietnamese_by_default_and_english_on_request() -> None:
    client = make_client()
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<html lang="vi"' in page.text
    assert "Tỉnh Lâm Đồng" in page.text and "Trung tâm Điều hành thông minh" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    english = client.get("/", params={"lang": "en"})
    assert '<html lang="en"' in english.text and "Intelligent Operations Center" in english.text
    assert '<html lang="vi"' in client.get("/", params={"lang": "xx"}).text
    # Every control the contract names is on the page (the buttons of alerts are made by app.js).
    for action in ("lang", "login", "token"):
        assert f'data-action="{action}"' in page.text
    script = client.get("/static/app.js").text
    for action in ("ack", "unack", "silence"):
        assert f'"data-action": "{action}"' in script
    assert "data-fingerprint" in script and "data-stale" in page.text


def test_the_page_loads_only_packaged_assets_with_their_hashes() -> None:
    client = make_client()
    page = client.get("/").text
    linked = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert linked and all(url.startswith(("/static/", "data:")) for url in linked), linked
    assert not re.search(r"https?://", client.get("/static/app.js").text.replace("http://www.w3.org", ""))
    for url in (u for u in linked if u.startswith("/static/")):
        answer = client.get(url)
        assert answer.status_code == 200, url
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"


def test_static_assets_revalidate_without_a_version_and_answer_304() -> None:
    client = make_client()
    answer = client.get("/static/i18n.js")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/javascript")
    assert answer.headers["cache-control"] == "no-cache"
    again = client.get("/static/i18n.js", headers={"If-None-Match": answer.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert client.get("/static/style.css?v=stale").headers["cache-control"] == "no-cache"
    assert client.get("/static/nope.js").status_code == 404
    assert client.get("/static/index.html").status_code == 404  # only through `/`
    assert client.get("/static/..%2Fwatch.py").status_code == 404
    assert client.get("/static/__init__.py").status_code == 404
    assert set(load_assets()) >= {"index.html", "app.js", "i18n.js", "style.css"}


def test_areas_lists_the_registry_of_the_day() -> None:
    client = make_client()
    areas = client.get("/api/v1/areas").json()
    by_code = {area["code"]: area for area in areas}
    assert by_code["68"] == {"code": "68", "name": "Tỉnh Lâm Đồng", "level": "province", "parent": None}
    assert by_code["22945"] == {
        "code": "22945",
        "name": "Phường Phan Thiết",
        "level": "commune",
        "parent": "68",
    }
    assert not [a for a in areas if a["level"] == "district"]  # two levels since 2025-07-01
    before = {a["code"]: a for a in client.get("/api/v1/areas", params={"at": "2025-06-30"}).json()}
    assert before["22945"]["name"] == "Phường Lạc Đạo" and before["22945"]["parent"] == "593"
    bad = client.get("/api/v1/areas", params={"at": "2025-13-45"})
    assert bad.status_code == 400 and "at:" in bad.json()["error"]
    assert client.get("/api/v1/areas", params={"at": "yesterday"}).status_code == 422


def test_the_english_page_names_the_province_in_english() -> None:
    english = make_client().get("/", params={"lang": "en"}).text
    assert "Lam Dong Province" in english and "Tỉnh Lâm Đồng" not in english


def test_map_gives_every_commune_of_the_province_a_cell() -> None:
    client = make_client()
    body = client.get("/api/v1/map").json()
    assert (body["province"], body["name"], body["name_en"]) == ("68", "Tỉnh Lâm Đồng", "Lam Dong Province")
    assert body["level"] == "commune" and body["unplaced"] == []
    cells = {cell["code"]: cell for cell in body["cells"]}
    communes = {a["code"] for a in client.get("/api/v1/areas").json() if a["level"] == "commune"}
    assert set(cells) == communes and len(cells) == 124
    mui_ne = cells["22918"]
    assert (mui_ne["name"], mui_ne["short"]) == ("Phường Mũi Né", "Mũi Né")
    left, top, right, bottom = body["bounds"]
    for cell in body["cells"]:
        assert len(cell["points"]) >= 3 and cell["area"] > 0, cell["code"]
        assert all(left <= x <= right and top <= y <= bottom for x, y in cell["points"])
    # Mũi Né lies east of Phan Thiết (x grows eastwards) and Đà Lạt's Lâm Viên north of both (y southwards).
    assert mui_ne["x"] > cells["22945"]["x"] and cells["24778"]["y"] < mui_ne["y"]
    # Before 2025-07-01 the province held its former communes (Lâm Đồng's own: Bình Thuận was another).
    before = client.get("/api/v1/map", params={"at": "2025-06-30"}).json()
    assert before["cells"] and "22945" not in {cell["code"] for cell in before["cells"]}
    assert client.get("/api/v1/map", params={"at": "2025-02-30"}).status_code == 400


def test_an_unknown_province_code_is_shown_as_given() -> None:
    assert "Tỉnh Lâm Đồng" in make_client(province="Tỉnh Lâm Đồng").get("/").text
    assert "&lt;b&gt;" in make_client(province="<b>").get("/").text  # escaped, never markup


def test_whoami_names_the_operator_and_refuses_others() -> None:
    client = make_client()
    assert client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {OPERATOR}"}).json() == {
        "name": "truc-ban-1",
        "kind": "operator",
    }
    assert client.get("/api/v1/whoami").status_code == 401
    assert client.get("/api/v1/whoami", headers={"Authorization": "Bearer nope"}).status_code == 401
    refused = client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {VENDOR}"})
    assert refused.status_code == 403 and "error" in refused.json()


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline(
        sinks=[], dedup=DedupIndex(None, window=3600, max_keys=1000), max_bytes=1 << 20, max_future=300
    )


def test_sources_count_from_the_pipeline_and_time_from_the_watch(pipeline: Pipeline) -> None:
    clock = [1_000_000.0]
    watch = SourceWatch(clock=lambda: clock[0])
    pipeline.received[("qtmt-aqi",)] += 5
    pipeline.accepted[("qtmt-aqi",)] += 3
    pipeline.rejected[("qtmt-aqi", "value")] += 1
    pipeline.duplicates[("qtmt-aqi",)] += 1
    pipeline.received[("viettel-ran",)] += 2
    watch.advance(0)
    for value in (100.0, 120.0, 130.0):
        clock[0] += 10
        watch.observe(event("qtmt-aqi", value))  # type: ignore[arg-type]
        watch.advance(0)
    rows = {
        row["source"]: row
        for row in make_client(pipeline=pipeline, watch=watch).get("/api/v1/sources").json()
    }
    aqi = rows["qtmt-aqi"]
    assert (aqi["received"], aqi["accepted"], aqi["rejected"], aqi["duplicates"]) == (5, 3, 1, 1)
    assert aqi["rate"] == pytest.approx(0.1)  # 3 events over the 30 s between the first and last sample
    assert aqi["last_seen"] == datetime.fromtimestamp(1_000_030.0, UTC).isoformat()
    assert rows["viettel-ran"]["last_seen"] is None and rows["viettel-ran"]["received"] == 2


def test_sources_without_a_watch_still_answer_counts(pipeline: Pipeline) -> None:
    pipeline.received[("qtmt-aqi",)] += 7
    [row] = make_client(pipeline=pipeline).get("/api/v1/sources").json()
    assert row["source"] == "qtmt-aqi" and row["received"] == 7 and row["last_seen"] is None
    assert make_client().get("/api/v1/sources").json() == []


def test_telemetry_keeps_the_latest_watched_reading_per_area() -> None:
    watch = SourceWatch()
    watch.observe(event("qtmt-aqi", 90.0, when="2026-03-02T08:00:00+07:00"))  # type: ignore[arg-type]
    watch.observe(event("qtmt-aqi", 162.0, when="2026-03-02T08:05:00+07:00"))  # type: ignore[arg-type]
    watch.observe(event("qtmt-aqi", 40.0, area="22918"))  # type: ignore[arg-type]
    watch.observe(event("qtmt-aqi", 1.0, metric="env.pm25"))  # type: ignore[arg-type]  # not watched
    client = make_client(watch=watch)
    readings = client.get("/api/v1/telemetry", params={"metric": "env.aqi"}).json()
    assert [(r["area"], r["value"]) for r in readings] == [("22918", 40.0), ("22945", 162.0)]
    assert readings[1]["time"] == "2026-03-02T01:05:00+00:00"
    assert make_client().get("/api/v1/telemetry").json() == []


def test_the_watch_is_bounded() -> None:
    watch = SourceWatch(max_sources=2, max_series=1)
    for index, source in enumerate(("a-1", "b-2", "c-3")):
        watch.observe(event(source, float(index), area=str(22000 + index)))  # type: ignore[arg-type]
    assert [stat.source for stat in watch.sources()] == ["a-1", "b-2"]
    assert len(watch.readings()) == 1 and watch.dropped == 2
