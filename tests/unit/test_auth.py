"""Bearer tokens -> principals (ioc/auth.py), the `require(kind)` dependency's 401/403, and closed reads
(`ioc.api.app.ReadAccess`, `[http] public_read = false`)."""

from __future__ import annotations

from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ioc.api.app import ReadAccess
from ioc.auth import Authenticator, Principal, bearer_token, require
from ioc.config import Settings, token_sha256

VENDOR, OPERATOR, VIEWER = "vendor-secret", "operator-secret", "viewer-secret"


@pytest.fixture
def settings() -> Settings:
    return Settings.model_validate({
        "vendors": [{"name": "qtmt", "token_sha256": token_sha256(VENDOR),
                  "sources": ["qtmt-aqi", "qtmt-water"]}],
        "operators": [{"name": "truc-ban-1", "token_sha256": token_sha256(OPERATOR)}],
        "viewers": [{"name": "wall-1", "token_sha256": token_sha256(VIEWER)}],
    })


def test_tokens_map_to_their_principals(settings: Settings) -> None:
    auth = Authenticator(settings)
    vendor = auth.authenticate(f"Bearer {VENDOR}")
    assert vendor == Principal("qtmt", "vendor", frozenset({"qtmt-aqi", "qtmt-water"}), "qtmt-aqi")
    assert auth.authenticate(f"Bearer {OPERATOR}") == Principal("truc-ban-1", "operator")
    assert auth.authenticate(f"Bearer {VIEWER}") == Principal("wall-1", "viewer")
    assert auth.authenticate(f"bearer   {VENDOR} ") == vendor  # the scheme is case-insensitive


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", f"Basic {VENDOR}", VENDOR, "Bearer nope",
                                    f"Bearer {VENDOR}x", f"Bearer {token_sha256(VENDOR)}"])
def test_missing_malformed_or_unknown_tokens_are_nobody(settings: Settings, header: str | None) -> None:
    # The last case: the configured digest itself is not a token (only its preimage is).
    assert Authenticator(settings).authenticate(header) is None


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("BEARER abc") == "abc"
    assert bearer_token("Token abc") is None
    assert bearer_token(None) is None


def operator_only_app(settings: Settings) -> httpx.ASGITransport:
    """An app with one operator-only route, `POST /ack`, answering errors as the daemon does."""
    app = FastAPI()
    app.state.authenticator = Authenticator(settings)

    @app.exception_handler(HTTPException)
    async def error(_request: object, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)

    @app.post("/ack")
    async def ack(who: Annotated[Principal, Depends(require("operator"))]) -> dict[str, str]:
        return {"by": who.name}

    return httpx.ASGITransport(app=app)


async def test_require_answers_401_and_403(settings: Settings) -> None:
    transport = operator_only_app(settings)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/ack")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert "missing bearer token" in response.json()["error"]
        response = await client.post("/ack", headers={"Authorization": "Bearer wrong"})
        assert response.status_code == 401 and "unknown token" in response.json()["error"]
        response = await client.post("/ack", headers={"Authorization": f"Bearer {VENDOR}"})
        assert response.status_code == 403
        assert response.json()["error"] == "vendor 'qtmt' may not do this: it needs an operator token"
        response = await client.post("/ack", headers={"Authorization": f"Bearer {OPERATOR}"})
        assert response.status_code == 200 and response.json() == {"by": "truc-ban-1"}


async def test_a_viewer_is_refused_what_only_an_operator_may_do(settings: Settings) -> None:
    transport = operator_only_app(settings)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/ack", headers={"Authorization": f"Bearer {VIEWER}"})
        assert response.status_code == 403
        assert response.json()["error"] == "viewer 'wall-1' may not do this: it needs an operator token"


def closed_app(settings: Settings) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    @app.get("/readyz")
    @app.get("/")
    @app.get("/static/{name}")
    @app.get("/api/v1/alerts")
    @app.get("/metrics")
    async def route() -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(ReadAccess, authenticator=Authenticator(settings))
    return app


@pytest.mark.parametrize(("path", "header", "status"), [
    ("/healthz", None, 200), ("/readyz", None, 200), ("/", None, 200), ("/static/app.js", None, 200),
    ("/api/v1/alerts", None, 401), ("/metrics", None, 401), ("/nope", None, 401), ("/docs", None, 401),
    ("/healthzx", None, 401), ("/static", None, 401), ("//api/v1/alerts", None, 401),
    ("/api/v1/alerts", "Bearer nope", 401), ("/api/v1/alerts", f"Basic {VIEWER}", 401),
    ("/api/v1/alerts", f"Bearer {VIEWER}", 200), ("/metrics", f"Bearer {VIEWER}", 200),
    ("/api/v1/alerts", f"Bearer {OPERATOR}", 200), ("/api/v1/alerts", f"bearer {VENDOR}", 200),
    ("/nope", f"Bearer {VIEWER}", 404),
])
async def test_closed_reads_need_a_known_token_but_for_health_and_the_shell(
    settings: Settings, path: str, header: str | None, status: int
) -> None:
    transport = httpx.ASGITransport(app=closed_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get(path, headers={"Authorization": header} if header else {})
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"].startswith(
            "missing bearer token" if header is None or header.startswith("Basic") else "unknown token")
