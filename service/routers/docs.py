"""`/docs`: Swagger UI, served with its files from this service, never from a CDN:
the page works offline, behind a firewall and under the strict
Content-Security-Policy it is sent with (scripts, styles, images and requests to
this origin only; no inline script).

The Swagger UI bundle comes from the `fastapi-offline` package (package data,
hash-locked like every dependency); the script that starts it is ours
(`service/docs_ui/`). The document itself is FastAPI's `/openapi.json`. No
`/redoc`: ReDoc's bundle loads its logo from its vendor's CDN whatever the options,
and `/openapi.json` serves any other viewer.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, HTMLResponse, Response

from service.services.errors import NotFoundError

router = APIRouter(tags=["docs"], include_in_schema=False)

ASSETS_PATH: Final = "/docs/assets"
# The files change only with a release (a new package version): a day of caching.
ASSET_CACHE_CONTROL: Final = "public, max-age=86400"
# Swagger UI sets styles from script (hence 'unsafe-inline' for styles only).
CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class Asset:
    package: str
    path: tuple[str, ...]
    media_type: str

    def file(self) -> Path:
        # Installed packages are directories: a real path FileResponse can stream.
        return Path(str(resources.files(self.package).joinpath(*self.path)))


ASSETS: Final = {
    "swagger-ui-bundle.js": Asset(
        "fastapi_offline", ("static", "swagger-ui-bundle.js"), "text/javascript"
    ),
    "swagger-ui.css": Asset("fastapi_offline", ("static", "swagger-ui.css"), "text/css"),
    "favicon.png": Asset("fastapi_offline", ("static", "favicon.png"), "image/png"),
    "swagger-init.js": Asset("service", ("docs_ui", "swagger-init.js"), "text/javascript"),
}


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI: every operation, and "Authorize" for a bearer token."""
    title = html.escape(f"{request.app.title} - API")
    # Behind a proxy that strips a path prefix, every URL keeps it.
    root = html.escape(request.scope.get("root_path", ""), quote=True)
    assets = root + ASSETS_PATH
    openapi = root + html.escape(request.app.openapi_url, quote=True)
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" type="image/png" href="{assets}/favicon.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/swagger-init.js"></script>
</body>
</html>
"""
    return HTMLResponse(page, headers=PAGE_HEADERS)


@router.get(ASSETS_PATH + "/{name}")
async def docs_asset(name: str) -> Response:
    asset = ASSETS.get(name)
    if asset is None:
        raise NotFoundError()
    return FileResponse(
        asset.file(),
        media_type=asset.media_type,
        headers={"Cache-Control": ASSET_CACHE_CONTROL, "X-Content-Type-Options": "nosniff"},
    )
