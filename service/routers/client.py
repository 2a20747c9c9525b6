"""The browser client (the npm package `@appointment-notify/client` in `clients/js/`),
served by the service itself so that a page and the server it talks to never disagree
on the protocol.

The files ship inside the package (package data: `service/clients/js` is a link to
`clients/js`, which setuptools follows), so the wheel and the Docker image serve
exactly what the repository holds, and every response names the package's version
(`X-Client-Version`, the `version` of its package.json, also the module's `VERSION`). They change only with a deploy: an ETag
(their hash) plus a short max-age lets browsers and CDNs revalidate cheaply and pick
up a new release within five minutes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Annotated, Final

from fastapi import APIRouter, Header
from starlette.responses import Response

router = APIRouter(prefix="/v1", tags=["browser"])

# Five minutes: a release reaches browsers quickly, and revalidation is a 304.
CACHE_CONTROL: Final = "public, max-age=300"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str
    version: str


@cache
def load_asset(name: str, media_type: str) -> Asset:
    """Read once per process (the route runs in the thread pool: no blocking I/O on
    the event loop)."""
    folder = resources.files("service").joinpath("clients", "js")
    body = folder.joinpath(name).read_bytes()
    version = str(json.loads(folder.joinpath("package.json").read_bytes())["version"])
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    return Asset(body=body, media_type=media_type, etag=etag, version=version)


def asset_response(asset: Asset, if_none_match: str | None) -> Response:
    headers = {
        "ETag": asset.etag,
        "Cache-Control": CACHE_CONTROL,
        "X-Client-Version": asset.version,
    }
    if if_none_match is not None and asset.etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match")]


@router.get("/client.js", include_in_schema=False)
def client_js(if_none_match: IfNoneMatch = None) -> Response:
    """The ES module (`import { NotifyClient } from ".../v1/client.js"`)."""
    return asset_response(
        load_asset("notify-client.js", "text/javascript; charset=utf-8"), if_none_match
    )


@router.get("/client.d.ts", include_in_schema=False)
def client_types(if_none_match: IfNoneMatch = None) -> Response:
    """Its TypeScript declarations."""
    return asset_response(
        load_asset("notify-client.d.ts", "application/typescript; charset=utf-8"), if_none_match
    )
