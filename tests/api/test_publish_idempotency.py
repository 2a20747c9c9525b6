"""POST /v1/events with `Idempotency-Key` (IETF httpapi draft semantics) and
durable publishing (NOTIFY_PUBLISH_WAIT_REPLICAS), as a backend retrying sees it."""

from __future__ import annotations

import threading
from typing import Any

import httpx2
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.events import event_dict
from tests.support.raw_redis import is_cluster, sync_client
from tests.support.redis_server import wait_until


def history_ids(settings: Settings, patient: str = "pt_1") -> list[str]:
    with sync_client(settings) as r:
        return [e[0].decode() for e in r.xrange(f"{settings.key_prefix}history:{{{patient}}}")]


def test_a_repeat_answers_as_the_first_and_stores_nothing(
    client: TestClient, tokens: Tokens, settings: Settings
) -> None:
    headers = {**bearer(tokens.service()), "Idempotency-Key": "backend-job-4711"}
    first = client.post("/v1/events", json=event_dict(), headers=headers)
    again = client.post("/v1/events", json=event_dict(), headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert "Idempotency-Replayed" not in first.headers
    assert again.headers["Idempotency-Replayed"] == "true"
    assert history_ids(settings) == [first.json()["id"]]


def test_the_same_key_with_another_event_is_422(
    client: TestClient, tokens: Tokens, settings: Settings
) -> None:
    headers = {**bearer(tokens.service()), "Idempotency-Key": "backend-job-4712"}
    first = client.post("/v1/events", json=event_dict(), headers=headers)
    other = client.post("/v1/events", json=event_dict(status="cancelled"), headers=headers)
    assert first.status_code == 201
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    assert history_ids(settings) == [first.json()["id"]]


def test_a_malformed_key_is_422(client: TestClient, tokens: Tokens, settings: Settings) -> None:
    headers = {**bearer(tokens.service()), "Idempotency-Key": "x" * 256}
    assert client.post("/v1/events", json=event_dict(), headers=headers).status_code == 422
    assert history_ids(settings) == []


def test_without_a_key_every_request_stores(client: TestClient, tokens: Tokens) -> None:
    first = client.post("/v1/events", json=event_dict(), headers=bearer(tokens.service()))
    second = client.post("/v1/events", json=event_dict(), headers=bearer(tokens.service()))
    assert first.json()["id"] != second.json()["id"]


def test_durable_publishing_waits_for_replicas(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    """The harness' Cluster has a replica per primary: WAIT 1 confirms. A
    standalone server has none: 503 `not_durable`, and a retry with the same key
    stores nothing new (it waits again, and is refused again)."""
    settings = make_settings(publish_wait_replicas=1, publish_wait_timeout_ms=300)
    headers = {**bearer(tokens.service()), "Idempotency-Key": "durable-1"}
    with TestClient(create_app(settings)) as c:
        first = c.post("/v1/events", json=event_dict(), headers=headers)
        if is_cluster(settings):
            assert first.status_code == 201
            assert history_ids(settings) == [first.json()["id"]]
            return
        assert first.status_code == 503
        assert first.json()["code"] == "not_durable"
        assert int(first.headers["Retry-After"]) >= 1
        stored = history_ids(settings)
        assert len(stored) == 1
        again = c.post("/v1/events", json=event_dict(), headers=headers)
        assert again.status_code == 503
        assert again.json()["code"] == "not_durable"
        assert history_ids(settings) == stored


def test_a_repeat_while_the_first_waits_for_replicas_is_409(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    settings = make_settings(publish_wait_replicas=3, publish_wait_timeout_ms=3000)
    headers = {**bearer(tokens.service()), "Idempotency-Key": "slow-durable"}
    answers: list[httpx2.Response] = []
    with TestClient(create_app(settings)) as c:

        def first_request() -> None:
            answers.append(c.post("/v1/events", json=event_dict(), headers=headers))

        thread = threading.Thread(target=first_request)
        thread.start()
        try:
            record = f"{settings.key_prefix}idempotency:{{pt_1}}:slow-durable"

            def in_flight() -> Any:
                with sync_client(settings) as r:
                    return r.hget(record, "f")

            wait_until(in_flight, 10, "the first request stored and is waiting")
            repeat = c.post("/v1/events", json=event_dict(), headers=headers)
        finally:
            thread.join(timeout=30)
        assert repeat.status_code == 409
        assert repeat.json()["code"] == "idempotency_key_in_flight"
        (first,) = answers
        # Three replicas never confirm: retry-able, and the key is free again.
        assert first.status_code == 503
        assert first.json()["code"] == "not_durable"
        assert len(history_ids(settings)) == 1
