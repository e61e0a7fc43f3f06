"""Bearer tokens -> principals (ioc/auth.py), and the `require(kind)` dependency's 401/403."""

from __future__ import annotations

from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ioc.auth import Authenticator, Principal, bearer_token, require
from ioc.config import Settings, token_sha256

VENDOR, OPERATOR = "vendor-secret", "operator-secret"


@pytest.fixture
def settings() -> Settings:
    return Settings.model_validate({
        "vendors": [{"name": "qtmt", "token_sha256": token_sha256(VENDOR),
                  "sources": ["qtmt-aqi", "qtmt-water"]}],
        "operators": [{"name": "truc-ban-1", "token_sha256": token_sha256(OPERATOR)}],
    })


def test_tokens_map_to_their_principals(settings: Settings) -> None:
    auth = Authenticator(settings)
    vendor = auth.authenticate(f"Bearer {VENDOR}")
    assert vendor == Principal("qtmt", "vendor", frozenset({"qtmt-aqi", "qtmt-water"}), "qtmt-aqi")
    assert auth.authenticate(f"Bearer {OPERATOR}") == Principal("truc-ban-1", "operator")
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


async def test_require_answers_401_and_403(settings: Settings) -> None:
    app = FastAPI()
    app.state.authenticator = Authenticator(settings)

    @app.exception_handler(HTTPException)
    async def error(_request: object, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)

    @app.post("/ack")
    async def ack(who: Annotated[Principal, Depends(require("operator"))]) -> dict[str, str]:
        return {"by": who.name}

    transport = httpx.ASGITransport(app=app)
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
