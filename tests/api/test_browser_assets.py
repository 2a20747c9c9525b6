"""`/v1/client.js`, `/v1/client.d.ts` and `/demo` against the real app: the served
files are the packaged ones, with an ETag; the demo exists outside production only."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import httpx
import jwt

from service.config import DEV_JWT_SECRET
from tests.conftest import SettingsFactory
from tests.support.app_server import run_app

PRODUCTION_SECRET = "production-like-hs256-secret-0123456789abcdef"
# The npm package: the one source of the served files.
PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "js"


def packaged(name: str) -> bytes:
    return resources.files("service").joinpath("clients", "js", name).read_bytes()


async def test_client_files_are_served_with_an_etag(make_settings: SettingsFactory) -> None:
    # Read before the app runs: file reads in the test's loop count as blocking.
    expected = {
        name: (PACKAGE / name).read_bytes() for name in ("notify-client.js", "notify-client.d.ts")
    }
    assert all(packaged(name) == body for name, body in expected.items())
    async with run_app(make_settings()) as app, httpx.AsyncClient(base_url=app.base_url) as http:
        for path, name, media in [
            ("/v1/client.js", "notify-client.js", "text/javascript"),
            ("/v1/client.d.ts", "notify-client.d.ts", "application/typescript"),
        ]:
            response = await http.get(path)
            assert response.status_code == 200
            assert response.content == expected[name]
            assert response.headers["content-type"].startswith(media)
            assert response.headers["cache-control"] == "public, max-age=300"
            etag = response.headers["etag"]
            again = await http.get(path, headers={"If-None-Match": etag})
            assert again.status_code == 304
            assert again.content == b""
            other = await http.get(path, headers={"If-None-Match": '"something-else"'})
            assert other.status_code == 200


async def test_demo_mints_a_dev_token_and_publishes(make_settings: SettingsFactory) -> None:
    async with run_app(make_settings()) as app, httpx.AsyncClient(base_url=app.base_url) as http:
        page = await http.get("/demo")
        assert page.status_code == 200
        assert 'from "/v1/client.js"' in page.text
        token = (await http.post("/demo/token")).json()["token"]
        claims = jwt.decode(token, DEV_JWT_SECRET, algorithms=["HS256"], audience="notify")
        assert claims["sub"] == "pt_demo"
        published = await http.post("/demo/events")
        assert published.status_code == 201
        assert published.json()["patient_id"] == "pt_demo"
        assert published.json()["id"]


async def test_demo_is_a_404_in_production(make_settings: SettingsFactory) -> None:
    settings = make_settings(env="production", jwt_secret=PRODUCTION_SECRET)
    async with run_app(settings) as app, httpx.AsyncClient(base_url=app.base_url) as http:
        assert (await http.get("/demo")).status_code == 404
        assert (await http.post("/demo/token")).status_code == 404
        assert (await http.post("/demo/events")).status_code == 404
        # The client itself is served in production too.
        assert (await http.get("/v1/client.js")).status_code == 200


async def test_served_client_reports_the_package_version(make_settings: SettingsFactory) -> None:
    """package.json's version, the module's `VERSION` export and the served
    `X-Client-Version` header are one number."""
    version = json.loads((PACKAGE / "package.json").read_text())["version"]
    declared = re.findall(
        r'^export const VERSION = "([^"]+)";$', (PACKAGE / "notify-client.js").read_text(), re.M
    )
    assert declared == [version]
    async with run_app(make_settings()) as app, httpx.AsyncClient(base_url=app.base_url) as http:
        for path in ("/v1/client.js", "/v1/client.d.ts"):
            response = await http.get(path)
            assert response.headers["x-client-version"] == version
            revalidated = await http.get(path, headers={"If-None-Match": response.headers["etag"]})
            assert revalidated.headers["x-client-version"] == version
