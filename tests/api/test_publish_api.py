"""POST /v1/events: 201 with the stored event; 422 shape, 400 meaning, 401/403, 503."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from service.services.principal import Role
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import settings_env
from tests.support.events import event_dict
from tests.support.redis_server import RedisServer


def test_publish_returns_stored_event(
    client: TestClient, tokens: Tokens, redis_server: RedisServer, settings: Settings
) -> None:
    response = client.post(
        "/v1/events", json=event_dict(extra_field="kept"), headers=bearer(tokens.service())
    )
    assert response.status_code == 201
    body = response.json()
    assert body["id"]
    assert body["published_at"]
    assert body["data"]["extra_field"] == "kept"
    with redis_server.client() as r:
        entries = r.xrange(f"{settings.key_prefix}history:pt_1")
        assert [e[0].decode() for e in entries] == [body["id"]]
        assert 0 < r.ttl(f"{settings.key_prefix}history:pt_1") <= settings.history_ttl_s


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.update(type="appointment.exploded"),
        lambda e: e.update(surprise=True),
        lambda e: e.update(patient_id="jane.doe@example.com"),
        lambda e: e.pop("occurred_at"),
        lambda e: e.update(occurred_at="2026-11-27T09:30:00"),  # no timezone
        lambda e: e["data"].update(starts_at="tomorrow"),
    ],
    ids=["unknown-type", "unknown-field", "pii-id", "missing-field", "naive-time", "bad-time"],
)
def test_wrong_shape_is_422(client: TestClient, tokens: Tokens, mutate: object) -> None:
    event = event_dict()
    assert callable(mutate)
    mutate(event)
    response = client.post("/v1/events", json=event, headers=bearer(tokens.service()))
    assert response.status_code == 422


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
    client: TestClient, tokens: Tokens, settings: Settings, redis_server: RedisServer
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
    with redis_server.client() as r:
        stored = [json.loads(f[b"e"]) for _, f in r.xrange(f"{settings.key_prefix}history:pt_1")]
    assert [e["appointment_id"] for e in stored] == ["ap_http", "ap_cli"]
    assert set(stored[0]) == set(stored[1])
