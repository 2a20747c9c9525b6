"""The API as a product: its OpenAPI document declares how to authenticate (a
`bearer` JWT scheme, Swagger UI's Authorize button), on exactly the operations
that refuse a caller without credentials; `/docs` loads nothing from elsewhere.
(In a real browser: tests/e2e/test_docs_page.py.)"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app

pytestmark = pytest.mark.own_topology


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def test_the_document_declares_the_bearer_scheme(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": schemes["bearer"]["description"],
    }
    assert "events:publish" in schemes["bearer"]["description"]
    assert schemes["ticket"]["type"] == "apiKey"
    assert (schemes["ticket"]["in"], schemes["ticket"]["name"]) == ("query", "ticket")


def test_exactly_the_operations_that_refuse_anonymous_callers_declare_security(
    client: TestClient,
) -> None:
    document = client.get("/openapi.json").json()
    protected = 0
    for method, path, operation in operations(document):
        url = re.sub(r"\{[^}]+\}", "x_1", path)
        body: dict[str, Any] | None = {} if method in ("post", "put", "patch") else None
        answer = client.request(method.upper(), url, json=body)
        security = operation.get("security", [])
        if answer.status_code == 401:
            protected += 1
            assert {"bearer": []} in security, (method, path)
            if path.endswith("/events") and method == "get":
                # Streams take a ticket instead (EventSource cannot set headers).
                assert security == [{"bearer": []}, {"ticket": []}], path
            else:
                assert security == [{"bearer": []}], (method, path)
        else:
            assert security == [], (method, path, answer.status_code)
    # Publish, tickets (create, delete), revocations, three streams.
    assert protected == 7


class _References(HTMLParser):
    """Every URL a page makes the browser load, and any inline script."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script_without_src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "data-openapi-url", "spec-url") and value is not None:
                self.urls.append(value)
            if name.startswith("on"):
                self.inline_scripts += 1
        self._in_script_without_src = tag == "script" and "src" not in dict(attrs)

    def handle_data(self, data: str) -> None:
        if self._in_script_without_src and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        self._in_script_without_src = False


def references(page: str) -> _References:
    parser = _References()
    parser.feed(page)
    return parser


@pytest.mark.parametrize("root_path", ["", "/notify"])
def test_docs_load_everything_from_this_origin(settings: Settings, root_path: str) -> None:
    with TestClient(create_app(settings), root_path=root_path) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = {
            directive.split()[0]: directive.split()[1:]
            for directive in page.headers["content-security-policy"].split("; ")
        }
        assert csp["default-src"] == ["'none'"]
        assert csp["script-src"] == ["'self'"]
        assert csp["connect-src"] == ["'self'"]
        found = references(page.text)
        assert found.inline_scripts == 0
        assert len(found.urls) == 5  # icon, stylesheet, bundle, starter, document
        for url in found.urls:
            # Same origin: a path, never a scheme or a host (`//cdn…`).
            assert url.startswith(f"{root_path}/"), url
            assert not url.startswith("//"), url
            asset = client.get(url.removeprefix(root_path))
            assert asset.status_code == 200, url
            assert asset.content
        assert f"{root_path}/openapi.json" in found.urls
        bundle = client.get("/docs/assets/swagger-ui-bundle.js")
        assert bundle.headers["content-type"].startswith("text/javascript")
        assert bundle.headers["cache-control"] == "public, max-age=86400"
        starter = client.get("/docs/assets/swagger-init.js").text
        assert "validatorUrl: null" in starter
        assert "persistAuthorization: false" in starter


def test_no_cdn_pages_and_no_other_files(client: TestClient) -> None:
    # FastAPI's own pages (Swagger UI and ReDoc from a CDN) are not served.
    assert client.get("/redoc").status_code == 404
    assert client.get("/docs/oauth2-redirect").status_code == 404
    for name in ("../../config.py", "swagger-ui-bundle.js.map", "core.py", "%2e%2e%2fmain.py"):
        missing = client.get(f"/docs/assets/{name}")
        assert missing.status_code == 404, name
        assert missing.json()["code"] == "not_found"
