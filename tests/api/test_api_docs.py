"""The API as a product: its OpenAPI document declares how to authenticate (a
`bearer` JWT scheme, Swagger UI's Authorize button), on exactly the operations
that refuse a caller without credentials."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

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
