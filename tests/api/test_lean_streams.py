"""The SSE routes' lean path (`service/transports/lean_streams.py`) answers exactly as
the FastAPI routes it bypasses: the same app is asked the same questions with and
without the lean layer, and status, body and headers must agree."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from starlette import requests
from starlette.datastructures import QueryParams
from structlog.testing import capture_logs

from service.config import Settings
from service.main import create_app
from service.transports.lean_streams import LeanStreamRoutes
from tests.conftest import Tokens, bearer

ME = "/v1/patients/me/events"
# Headers whose value differs per request by design.
PER_REQUEST = {"x-request-id", "date"}


@pytest.fixture
def lean(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def routed(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings)
    # The middleware stack is built on first use: without the lean layer, every
    # request goes through FastAPI's routing and dependencies.
    app.user_middleware = [
        m for m in app.user_middleware if cast(object, m.cls) is not LeanStreamRoutes
    ]
    with TestClient(app) as client:
        yield client


def answer(client: TestClient, url: str, headers: dict[str, str]) -> dict[str, Any]:
    with client.stream("GET", url, headers=headers) as response:
        first = next(response.iter_bytes(), b"")
        head = {k: v for k, v in response.headers.items() if k not in PER_REQUEST}
        if response.status_code == 200:
            # The jittered `retry:` differs per connection; what follows must not.
            body: Any = first.split(b"\n", 1)[1] if first.startswith(b"retry:") else first
        else:
            body = first or response.read()
        return {"status": response.status_code, "headers": head, "body": body}


def cases(tokens: Tokens) -> list[tuple[str, dict[str, str]]]:
    patient, staff = bearer(tokens.patient("pt_1")), bearer(tokens.staff())
    return [
        (ME, {}),
        (ME, {"Authorization": "Bearer garbage"}),
        (ME, bearer(tokens.make("pt_1", ttl_s=-120))),
        (f"{ME}?ticket=x", patient),  # ticket and bearer: ambiguous
        (f"{ME}?ticket=x&ticket=y", {}),
        (f"{ME}?ticket={'a' * 43}", {}),
        (ME, bearer(tokens.service())),  # /me is not for a service: 403
        ("/v1/patients/pt_2/events", patient),  # another patient: 404
        ("/v1/patients/pt_2/events", bearer(tokens.service())),
        ("/v1/patients/pt_2/events", staff),
        ("/v1/patients/bad%20id/events", staff),  # FastAPI's 422
        ("/v1/patients/me/appointments/ap_1/events", patient),
        ("/v1/patients/me/appointments/ap%2F1/events", patient),
        (f"{ME}?last_event_id={'1' * 65}", patient),  # FastAPI's 422
        (f"{ME}?last_event_id=not-an-id", patient),
        (ME, {**patient, "Last-Event-ID": "1-0"}),
        (f"{ME}?last_event_id=5-0", {**patient, "Last-Event-ID": "1-0"}),  # the header wins
        (f"{ME}?last_event_id=5-0", patient),
        (ME, patient),
    ]


def test_the_lean_path_answers_as_the_routed_one(
    lean: TestClient, routed: TestClient, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[str] = []
    original = LeanStreamRoutes._open

    async def spy(*args: Any) -> Any:
        taken.append("lean")
        return await original(*args)

    monkeypatch.setattr(LeanStreamRoutes, "_open", staticmethod(spy))
    for url, headers in cases(tokens):
        assert answer(lean, url, headers) == answer(routed, url, headers), url
    # It did answer (all but the three that FastAPI's validation refuses).
    assert len(taken) == len(cases(tokens)) - 3


def test_openapi_still_documents_the_stream_routes(lean: TestClient) -> None:
    paths = lean.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/patients/me/events",
        "/v1/patients/me/appointments/{appointment_id}/events",
        "/v1/patients/{patient_id}/events",
    ):
        assert "get" in paths[path]


@pytest.mark.parametrize("path", ["lean", "routed"])
def test_a_stream_is_logged_by_its_route_template_never_its_path(
    path: str, lean: TestClient, routed: TestClient, tokens: Tokens
) -> None:
    # The path holds the patient's id; logs and metrics name the route.
    client = lean if path == "lean" else routed
    staff = bearer(tokens.staff())
    with (
        capture_logs() as logs,
        client.stream("GET", "/v1/patients/pt_7/events", headers=staff) as r,
    ):
        assert r.status_code == 200
        next(r.iter_bytes())
    opened = [line for line in logs if line["event"] == "stream_opened"]
    assert [line["route"] for line in opened] == ["/v1/patients/{patient_id}/events"]


def test_a_lean_open_parses_its_query_string_once(
    lean: TestClient, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `last_event_id` and `ticket` look-ups share one parse (issue 23: a
    connect's CPU)."""
    parsed: list[bytes] = []

    class Counting(QueryParams):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            parsed.append(args[0] if args else b"")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(requests, "QueryParams", Counting)
    url = f"{ME}?last_event_id=5-0&ticket={'a' * 43}"
    assert answer(lean, url, {})["status"] == 401  # an unknown ticket
    assert parsed == [b"last_event_id=5-0&ticket=" + b"a" * 43]
