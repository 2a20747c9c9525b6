"""POST /v1/events: 201 with the stored event; 422 shape, 400 meaning, 401/403, 503."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from fastapi.testclient import TestClient
from notify_publisher.events import MAX_EVENT_BYTES

from service.config import Settings
from service.main import create_app
from service.services.principal import Role
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import settings_env
from tests.support.events import event_dict
from tests.support.raw_redis import sync_client
from tests.support.redis_server import RedisServer


def test_publish_returns_stored_event(
    client: TestClient, tokens: Tokens, settings: Settings
) -> None:
    response = client.post(
        "/v1/events", json=event_dict(extra_field="kept"), headers=bearer(tokens.service())
    )
    assert response.status_code == 201
    body = response.json()
    assert body["id"]
    assert body["published_at"]
    assert body["data"]["extra_field"] == "kept"
    with sync_client(settings) as r:
        entries = r.xrange(f"{settings.key_prefix}history:{{pt_1}}")
        assert [e[0].decode() for e in entries] == [body["id"]]
        assert 0 < r.ttl(f"{settings.key_prefix}history:{{pt_1}}") <= settings.history_ttl_s


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.update(type="appointment.exploded"),
        lambda e: e.update(surprise=True),
        lambda e: e.update(patient_id="jane.doe@example.com"),
        lambda e: e.pop("occurred_at"),
        lambda e: e.update(occurred_at="2026-11-27T09:30:00"),  # no timezone
        lambda e: e["data"].update(starts_at="tomorrow"),
        # Numbers are never times: lax parsing would store 1970-01-01T00:00:00Z.
        lambda e: e["data"].update(starts_at=0),
        lambda e: e["data"].update(ends_at=1764597600.5),
        lambda e: e.update(occurred_at="0"),
        lambda e: e.update(occurred_at="1764597600"),
        lambda e: e.update(occurred_at="2026-11-27"),  # a date is not a date-time
        lambda e: e.update(occurred_at="2026-11-27 09:30:00Z"),
        # No lax coercion of ids or status either.
        lambda e: e.update(patient_id=1),
        lambda e: e.update(appointment_id=True),
        lambda e: e["data"].update(status=1),
        lambda e: e["data"].update(location_id=3),
    ],
    ids=[
        "unknown-type",
        "unknown-field",
        "pii-id",
        "missing-field",
        "naive-time",
        "bad-time",
        "integer-time",
        "float-time",
        "numeric-string-time",
        "unix-string-time",
        "date-only",
        "space-separated",
        "integer-patient-id",
        "boolean-appointment-id",
        "integer-status",
        "integer-location-id",
    ],
)
def test_wrong_shape_is_422(client: TestClient, tokens: Tokens, mutate: object) -> None:
    event = event_dict()
    assert callable(mutate)
    mutate(event)
    response = client.post("/v1/events", json=event, headers=bearer(tokens.service()))
    assert response.status_code == 422


def test_an_integer_timestamp_is_422_and_nothing_is_stored(
    client: TestClient, tokens: Tokens, settings: Settings
) -> None:
    response = client.post(
        "/v1/events", json=event_dict(starts_at=0), headers=bearer(tokens.service())
    )
    assert response.status_code == 422
    assert "RFC 3339" in response.text
    assert not history_exists(settings)


def test_offsets_other_than_z_are_kept(client: TestClient, tokens: Tokens) -> None:
    response = client.post(
        "/v1/events",
        json=event_dict(starts_at="2026-12-01T15:00:00+01:00", ends_at="2026-12-01T14:30:00Z"),
        headers=bearer(tokens.service()),
    )
    assert response.status_code == 201
    assert response.json()["data"]["starts_at"] == "2026-12-01T15:00:00+01:00"


def padded_event(body_bytes: int) -> bytes:
    """A valid event whose JSON body is exactly `body_bytes` long."""
    empty = json.dumps(event_dict(note="")).encode()
    body = json.dumps(event_dict(note="n" * (body_bytes - len(empty)))).encode()
    assert len(body) == body_bytes
    return body


def post_body(client: TestClient, tokens: Tokens, content: object) -> Any:
    return client.post(
        "/v1/events",
        content=content,  # type: ignore[arg-type]
        headers={**bearer(tokens.service()), "Content-Type": "application/json"},
    )


def history_exists(settings: Settings) -> bool:
    with sync_client(settings) as r:
        return bool(r.exists(f"{settings.key_prefix}history:{{pt_1}}"))


@pytest.mark.parametrize("size", [100_000, 2_000_000, MAX_EVENT_BYTES + 1])
def test_an_event_above_the_size_limit_is_413_before_it_is_stored(
    client: TestClient, tokens: Tokens, settings: Settings, size: int
) -> None:
    response = post_body(client, tokens, padded_event(size))
    assert response.status_code == 413
    assert str(MAX_EVENT_BYTES) in response.json()["detail"]
    assert not history_exists(settings)


def test_a_chunked_body_above_the_limit_is_413(
    client: TestClient, tokens: Tokens, settings: Settings
) -> None:
    body = padded_event(100_000)
    chunks = (body[i : i + 8192] for i in range(0, len(body), 8192))  # no Content-Length
    response = post_body(client, tokens, chunks)
    assert response.status_code == 413
    assert not history_exists(settings)


def test_an_event_that_fits_the_body_but_not_the_stored_form_is_413(
    client: TestClient, tokens: Tokens, settings: Settings
) -> None:
    # The body passes the request limit; `published_at` and the `id` would push
    # the stored event past it, where the hub and replay would drop it.
    response = post_body(client, tokens, padded_event(MAX_EVENT_BYTES - 10))
    assert response.status_code == 413
    assert response.json()["code"] == "event_too_large"
    assert not history_exists(settings)


def test_a_large_event_under_the_limit_is_stored(client: TestClient, tokens: Tokens) -> None:
    assert post_body(client, tokens, padded_event(MAX_EVENT_BYTES - 200)).status_code == 201


def test_business_rule_is_400(client: TestClient, tokens: Tokens) -> None:
    response = client.post(
        "/v1/events",
        json=event_dict(starts_at="2026-12-01T15:00:00Z", ends_at="2026-12-01T14:00:00Z"),
        headers=bearer(tokens.service()),
    )
    assert response.status_code == 400
    assert "starts_at" in response.json()["detail"]


def test_needs_a_service_token_with_the_scope(client: TestClient, tokens: Tokens) -> None:
    assert client.post("/v1/events", json=event_dict()).status_code == 401
    assert (
        client.post("/v1/events", json=event_dict(), headers=bearer(tokens.patient())).status_code
        == 403
    )
    no_scope = tokens.make("svc_2", role=Role.SERVICE)
    assert client.post("/v1/events", json=event_dict(), headers=bearer(no_scope)).status_code == 403


def test_redis_down_is_503_with_retry_after(
    own_redis: RedisServer, make_settings: SettingsFactory, tokens: Tokens
) -> None:
    with TestClient(create_app(make_settings(redis_url=own_redis.url))) as c:
        own_redis.stop(kill=True)
        response = c.post("/v1/events", json=event_dict(), headers=bearer(tokens.service()))
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) > 0
        assert str(own_redis.port) not in response.text
        own_redis.start()


def test_cli_library_and_http_store_the_same_shape(
    client: TestClient, tokens: Tokens, settings: Settings
) -> None:
    http_event = client.post(
        "/v1/events", json=event_dict(appointment_id="ap_http"), headers=bearer(tokens.service())
    ).json()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "publish",
            "--json",
            json.dumps(event_dict(appointment_id="ap_cli")),
        ],
        env=settings_env(settings),
        capture_output=True,
        timeout=60,
        check=True,
    )
    cli_event = json.loads(result.stdout)
    assert set(cli_event) == set(http_event)
    with sync_client(settings) as r:
        stored = [
            json.loads(f[b"e"]) for _, f in r.xrange(f"{settings.key_prefix}history:{{pt_1}}")
        ]
    assert [e["appointment_id"] for e in stored] == ["ap_http", "ap_cli"]
    assert set(stored[0]) == set(stored[1])
