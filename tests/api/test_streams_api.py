"""SSE routes through Starlette's TestClient: who may open which stream."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Tokens, bearer

ME = "/v1/patients/me/events"


def stream_status(client: TestClient, url: str, headers: dict[str, str] | None = None) -> int:
    with client.stream("GET", url, headers=headers or {}) as response:
        return response.status_code


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": "Bearer " + "a" * 10_000},
    ],
    ids=["missing", "basic", "empty", "garbage", "huge"],
)
def test_bad_credentials_are_the_same_401(client: TestClient, headers: dict[str, str]) -> None:
    response = client.get(ME, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"detail": "unauthorized", "code": "unauthorized"}
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_expired_and_foreign_tokens_are_401(client: TestClient, tokens: Tokens) -> None:
    expired = tokens.make("pt_1", ttl_s=-120)
    wrong_audience = tokens.make("pt_1", aud="other")
    for token in (expired, wrong_audience):
        response = client.get(ME, headers=bearer(token))
        assert response.status_code == 401
        assert response.json() == {"detail": "unauthorized", "code": "unauthorized"}


def test_me_is_not_captured_by_patient_id(client: TestClient, tokens: Tokens) -> None:
    # Were "/me" routed to "/{patient_id}", a patient would get 404 for "me".
    assert stream_status(client, ME, bearer(tokens.patient("pt_1"))) == 200


def test_patient_asking_for_another_patient_gets_404(client: TestClient, tokens: Tokens) -> None:
    response = client.get("/v1/patients/pt_2/events", headers=bearer(tokens.patient("pt_1")))
    assert response.status_code == 404
    unknown = client.get("/v1/patients/pt_nobody/events", headers=bearer(tokens.patient("pt_1")))
    assert unknown.status_code == 404
    assert unknown.json() == response.json()


def test_staff_may_open_a_patient_stream(client: TestClient, tokens: Tokens) -> None:
    assert stream_status(client, "/v1/patients/pt_9/events", bearer(tokens.staff())) == 200
    assert stream_status(client, "/v1/patients/pt_1/events", bearer(tokens.patient("pt_1"))) == 200


def test_non_patients_have_no_me_stream(client: TestClient, tokens: Tokens) -> None:
    assert client.get(ME, headers=bearer(tokens.staff())).status_code == 403
    assert client.get(ME, headers=bearer(tokens.service())).status_code == 403


def test_path_ids_are_validated(client: TestClient, tokens: Tokens) -> None:
    url = "/v1/patients/me/appointments/bad id!/events"
    assert client.get(url, headers=bearer(tokens.patient())).status_code == 422


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    assert (
        client.get("/health/live", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    made = client.get("/health/live", headers={"X-Request-ID": "bad id\n"}).headers["x-request-id"]
    assert made != "bad id\n"
    assert len(made) == 32


def test_health_probes(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert "redis://" not in ready.text


def test_unexpected_error_is_generic_500_with_request_id(client: TestClient) -> None:
    app = client.app

    @app.get("/boom")  # type: ignore[attr-defined,untyped-decorator]
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    with TestClient(app, raise_server_exceptions=False) as c:
        response = c.get("/boom", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 500
    assert response.json() == {
        "detail": "internal error",
        "code": "internal_error",
        "request_id": "req-42",
    }
    assert "secret" not in response.text
