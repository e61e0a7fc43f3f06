"""Who is calling: bearer tokens -> vendors, operators and viewers (docs/configuration.md `[[vendors]]`,
`[[operators]]`, docs/operations.md `[[viewers]]`).

The config holds only the hex SHA-256 of each token, so a leaked config file leaks no credential. A request's
token is hashed and the digest looked up in a dict.

Why a dict lookup and not `hmac.compare_digest` over every entry: a timing side channel of the lookup can at
most reveal something about the *stored digest* (which bucket it hashes to, how many leading bytes match),
never about the token. Knowing a digest, even all of it, does not help an attacker: they would still need a
SHA-256 preimage to produce a token that hashes to it. The attacker also controls only the token, not the
digest, so they cannot steer the compared bytes without inverting SHA-256. Constant-time comparison
protects secrets that are compared directly; here the secret never reaches a comparison.

`require(kind)` is the FastAPI dependency used by every authenticated route (vendor intake, operator
ack/silence): 401 with `WWW-Authenticate: Bearer` for a missing or unknown token, 403 for a token of
the wrong kind. It finds the `Authenticator` in `app.state.authenticator` (set by `ioc.api.app.create_app`).
A viewer may only read, and only needs to when `[http] public_read = false` (`ioc.api.app.ReadAccess`
then asks every route but `/healthz`, `/readyz` and the wall's shell for a token of any kind).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from ioc.config import OperatorSettings, Settings, VendorSettings, ViewerSettings

PrincipalKind = Literal["vendor", "operator", "viewer"]

_BEARER = "bearer"
_ARTICLE: dict[str, str] = {"vendor": "a vendor", "operator": "an operator", "viewer": "a viewer"}
# Only for the OpenAPI document (the "Authorize" button in /docs); the checking is done by `require`.
_bearer_scheme = HTTPBearer(
    auto_error=False,
    description="A vendor token (to push events), an operator token (to acknowledge and silence) or, when "
                "`[http] public_read = false`, any of them or a viewer token to read.",
)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. `sources` are the event sources a vendor may send for (empty for an
    operator); `default_source` is the vendor's first configured source, which the intake uses to count
    items that name no usable source of their own."""

    name: str
    kind: PrincipalKind
    sources: frozenset[str] = frozenset()
    default_source: str | None = None


def _vendor(settings: VendorSettings) -> Principal:
    return Principal(settings.name, "vendor", frozenset(settings.sources), settings.sources[0])


def _operator(settings: OperatorSettings) -> Principal:
    return Principal(settings.name, "operator")


def _viewer(settings: ViewerSettings) -> Principal:
    return Principal(settings.name, "viewer")


def bearer_token(authorization_header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), else None."""
    if not authorization_header:
        return None
    scheme, _, token = authorization_header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != _BEARER or not token:
        return None
    return token


class Authenticator:
    """Maps bearer tokens to principals by the SHA-256 of the token (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        principals: Iterable[tuple[str, Principal]] = [
            *((vendor.token_sha256.lower(), _vendor(vendor)) for vendor in settings.vendors),
            *((operator.token_sha256.lower(), _operator(operator)) for operator in settings.operators),
            *((viewer.token_sha256.lower(), _viewer(viewer)) for viewer in settings.viewers),
        ]
        # Settings refuses two principals with one token, so this dict loses nobody.
        self._by_digest: dict[str, Principal] = dict(principals)

    def authenticate(self, authorization_header: str | None) -> Principal | None:
        """The principal of an `Authorization` header value, or None when it is missing, not a bearer
        token, or unknown."""
        token = bearer_token(authorization_header)
        if token is None:
            return None
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        return self._by_digest.get(digest)

    @property
    def principals(self) -> list[Principal]:
        return list(self._by_digest.values())


def require(kind: PrincipalKind) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency answering the caller's `Principal` of `kind`, or raising 401/403.

    Use as `principal: Principal = Depends(require("operator"))`. The app must hold an `Authenticator`
    in `app.state.authenticator`.
    """

    async def dependency(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer_scheme)],
    ) -> Principal:
        authenticator: Authenticator = request.app.state.authenticator
        header = request.headers.get("authorization")
        principal = authenticator.authenticate(header)
        if principal is None:
            reason = "missing bearer token" if bearer_token(header) is None else "unknown token"
            raise HTTPException(401, f"{reason}: send 'Authorization: Bearer <{kind} token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if principal.kind != kind:
            raise HTTPException(403, f"{principal.kind} {principal.name!r} may not do this: it needs "
                                     f"{_ARTICLE[kind]} token")
        return principal

    dependency.__name__ = f"require_{kind}"
    return dependency
