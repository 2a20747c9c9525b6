"""Every error answer has one body shape, `ErrorResponse`: `detail` and `code`
always, `errors` (each wrong field) on a 422, `request_id` on a 500; and the
OpenAPI document says so for every error status it lists."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from service.schemas.errors import ErrorResponse
from service.services.commands import CommandRateLimitedError
from service.services.errors import ConflictError
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.events import event_dict
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.own_topology

KEYS = {"detail", "code", "errors", "request_id"}


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) <= KEYS, body
    ErrorResponse.model_validate(body)
    assert body["code"] == code
    assert body["detail"]
    assert ("errors" in body) == (status == 422)
    assert ("request_id" in body) == (status == 500)
    return body


def with_test_routes(app: FastAPI) -> FastAPI:
    """Errors no public route raises today, through the same mapping: the 409 a
    publish in flight gets, the 429 of a rate limit, a bug's 500."""

    async def conflict() -> None:
        raise ConflictError()

    async def rate_limited() -> None:
        raise CommandRateLimitedError()

    async def bug() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/test/conflict", conflict)
    app.add_api_route("/test/rate-limited", rate_limited)
    app.add_api_route("/test/bug", bug)
    return app


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    app = with_test_routes(create_app(settings))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_4xx_and_500_share_one_shape(api: TestClient, tokens: Tokens) -> None:
    service = bearer(tokens.service())
    # 400: right shape, wrong meaning.
    backwards = event_dict(starts_at="2026-12-01T15:00:00Z", ends_at="2026-12-01T14:00:00Z")
    assert_error(api.post("/v1/events", json=backwards, headers=service), 400, "invalid_event")
    # 401, one body for every reason.
    for headers in ({}, bearer("not-a-jwt"), {"Authorization": "Basic Zm9vOmJhcg=="}):
        refused = api.post("/v1/events", json=event_dict(), headers=headers)
        assert_error(refused, 401, "unauthorized")
        assert refused.headers["www-authenticate"].startswith("Bearer")
    # 403
    patient = bearer(tokens.patient("pt_1"))
    assert_error(api.post("/v1/events", json=event_dict(), headers=patient), 403, "forbidden")
    # 404: somebody else's ticket (or none), and a path that does not exist.
    assert_error(api.delete("/v1/stream-tickets/tk_nope", headers=patient), 404, "not_found")
    assert_error(api.get("/v1/nothing-here"), 404, "not_found")
    # 405, with the methods that exist.
    wrong_method = api.put("/v1/events", json=event_dict(), headers=service)
    assert_error(wrong_method, 405, "method_not_allowed")
    assert "POST" in wrong_method.headers["allow"]
    # 409 and 429 tell when to come back.
    conflict = assert_error(api.get("/test/conflict"), 409, "conflict")
    assert conflict["detail"]
    assert int(api.get("/test/conflict").headers["retry-after"]) >= 1
    limited = api.get("/test/rate-limited")
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["retry-after"]) >= 1
    # 413 before the body is read.
    big = {**event_dict(), "data": {"note": "x" * 70_000}}
    assert_error(api.post("/v1/events", json=big, headers=service), 413, "body_too_large")
    # 500: nothing internal, only the request id.
    bug = assert_error(api.get("/test/bug"), 500, "internal_error")
    assert "secret" not in bug["detail"]
    assert bug["request_id"]


def test_422_lists_each_wrong_field_without_echoing_it(api: TestClient, tokens: Tokens) -> None:
    sent = event_dict()
    sent["occurred_at"] = 0  # a number is never a time
    sent["patient_id"] = "jane.doe@example.com"  # PHI in the wrong place: never echoed
    sent["surprise"] = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    response = api.post("/v1/events", json=sent, headers=bearer(tokens.service()))
    body = assert_error(response, 422, "validation_error")
    where = {tuple(error["loc"]) for error in body["errors"]}
    assert {("body", "patient_id"), ("body", "occurred_at"), ("body", "surprise")} <= where
    for error in body["errors"]:
        assert set(error) == {"loc", "msg", "type"}
        assert error["msg"]
        assert error["type"]
    assert "jane.doe" not in response.text
    assert "eyJhbGci" not in response.text
    # A query parameter too (the SSE routes' resume id), in the same shape.
    long_id = api.get(
        "/v1/patients/me/events",
        params={"last_event_id": "1" * 65},
        headers=bearer(tokens.patient("pt_1")),
    )
    assert assert_error(long_id, 422, "validation_error")["errors"][0]["loc"] == [
        "query",
        "last_event_id",
    ]


def test_503_when_redis_is_away_or_not_started(
    own_redis: RedisServer, make_settings: SettingsFactory, tokens: Tokens
) -> None:
    settings = make_settings(redis_url=own_redis.url)
    service = bearer(tokens.service())
    # Before the lifespan has run (a request racing start-up).
    not_started = TestClient(create_app(settings))
    starting = not_started.post("/v1/events", json=event_dict(), headers=service)
    assert_error(starting, 503, "unavailable")
    assert starting.headers["retry-after"]
    with TestClient(create_app(settings)) as api:
        own_redis.stop(kill=True)
        away = api.post("/v1/events", json=event_dict(), headers=service)
        assert_error(away, 503, "broker_unavailable")
        assert int(away.headers["retry-after"]) >= 1


def test_the_document_gives_every_error_status_the_one_shape(settings: Settings) -> None:
    document = create_app(settings).openapi()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    error_ref = "#/components/schemas/ErrorResponse"
    statuses: set[str] = set()
    for operations in document["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if int(status) < 400 or operation["operationId"].startswith("ready"):
                    continue
                statuses.add(status)
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": error_ref}, (operation["operationId"], status)
    assert {"400", "401", "403", "404", "413", "422", "503"} <= statuses
    schema = document["components"]["schemas"]["ErrorResponse"]
    assert set(schema["required"]) == {"detail", "code"}
    assert "errors" in schema["properties"]
