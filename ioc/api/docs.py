"""`GET /docs`: the API's interactive documentation (Swagger UI) served whole from installed packages, with
a Content-Security-Policy, so it works on a closed network and runs no script from anywhere else (CONTRACT §9
"Offline").

FastAPI's own `/docs` page loads Swagger UI from a CDN with a floating major version and an inline script;
on the origin where the wall keeps an operator's token, that is someone else's code with the token in
reach, and on a closed network a blank page. Here the assets come from the pinned `fastapi-offline`
package (only its static files are used: Swagger UI's bundle and CSS), the page's own start-up script is a
file of ours, and the policy allows scripts, styles, images and connections from this origin only (and
`data:` images, which Swagger UI's CSS uses for its icons).

Routes: `GET /docs` (the page) and `GET /docs/assets/{name}` (the bundle, its CSS, the start-up script,
the icon): linked with `?v=<content hash>` and then cached for a year, else revalidated with an `ETag`.
"""

from __future__ import annotations

import functools
import hashlib
import html
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, Request, Response
from starlette.exceptions import HTTPException

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
IMMUTABLE = "public, max-age=31536000, immutable"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png"}

# Swagger UI started by a file of ours (the policy allows no inline script). The settings are FastAPI's
# defaults, with the online validator badge (an image from validator.swagger.io) turned off.
INIT_JS = b"""\
"use strict";
const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: root.dataset.openapi,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
"""

PAGE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" type="image/png" href="{favicon}">
<link rel="stylesheet" href="{css}">
</head>
<body>
<div id="swagger-ui" data-openapi="{openapi}"></div>
<script src="{bundle}"></script>
<script src="{init}"></script>
</body>
</html>
"""


@dataclass(frozen=True, slots=True)
class DocsAsset:
    name: str
    body: bytes
    media_type: str
    digest: str

    @property
    def url(self) -> str:
        return f"{ASSETS_PATH}/{self.name}?v={self.digest}"


def _asset(name: str, body: bytes) -> DocsAsset:
    suffix = "." + name.rpartition(".")[2]
    return DocsAsset(name, body, MEDIA_TYPES[suffix], hashlib.sha256(body).hexdigest()[:16])


@functools.cache
def docs_assets() -> dict[str, DocsAsset]:
    """Swagger UI's files from the installed `fastapi-offline` package, and our start-up script."""
    static = resources.files("fastapi_offline").joinpath("static")
    assets = [_asset(name, static.joinpath(name).read_bytes())
              for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")]
    assets.append(_asset("init.js", INIT_JS))
    return {asset.name: asset for asset in assets}


def docs_router(*, title: str, openapi_url: str) -> APIRouter:
    """`/docs` and its assets, for the OpenAPI document at `openapi_url`."""
    assets = docs_assets()
    page = PAGE.format(title=html.escape(f"{title} — API documentation"),
                       openapi=html.escape(openapi_url, quote=True),
                       favicon=assets["favicon.png"].url, css=assets["swagger-ui.css"].url,
                       bundle=assets["swagger-ui-bundle.js"].url, init=assets["init.js"].url).encode()
    router = APIRouter(include_in_schema=False)

    @router.get(DOCS_PATH)
    def docs() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @router.get(ASSETS_PATH + "/{name}")
    def asset(name: str, request: Request, v: str | None = None) -> Response:
        found = assets.get(name)
        if found is None:
            raise HTTPException(404, f"not found: {request.url.path}")
        etag = f'"{found.digest}"'
        headers = {"ETag": etag, "Cache-Control": IMMUTABLE if v == found.digest else "no-cache",
                   "X-Content-Type-Options": "nosniff"}
        if etag in request.headers.get("if-none-match", "").replace("W/", "").split(", "):
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)

    return router
