"""The publisher package as a backend uses it: `SyncPublisher` and `Publisher`
against the test harness' Redis (standalone and Cluster)."""

from __future__ import annotations

import json
import uuid

import pytest
import redis
from notify_publisher import (
    ConfigurationError,
    EventCreate,
    IdempotencyKeyReusedError,
    InvalidEventError,
    Publisher,
    PublisherConfig,
    SyncPublisher,
)
from notify_publisher.keys import RedisKeys

from tests.support.events import event
from tests.support.redis_server import RedisServer
from tests.support.redis_topologies import LocalCluster


def prefix() -> str:
    return f"p{uuid.uuid4().hex[:8]}:"


def history(client: redis.Redis, keys: RedisKeys, patient: str) -> list[str]:
    """The ids in `patient`'s history stream, oldest first."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(keys.history(patient))  # type: ignore[assignment]
    return [entry_id.decode() for entry_id, _ in entries]


def test_sync_publish_stores_and_delivers_with_its_id(redis_server: RedisServer) -> None:
    keys = RedisKeys(prefix())
    # Closed on every path, a failed assertion included (not left to the GC).
    with redis_server.client() as client, client.pubsub() as live:
        live.subscribe(keys.patient_channel("pt_1"))
        assert live.get_message(timeout=2) is not None  # the subscribe confirmation
        with SyncPublisher.from_url(redis_server.url, key_prefix=keys.prefix) as publisher:
            event_id = publisher.publish(event("pt_1"))
        assert history(client, keys, "pt_1") == [event_id]
        message = live.get_message(timeout=2)
    assert message is not None
    delivered = json.loads(message["data"])
    assert delivered["id"] == event_id
    assert delivered["patient_id"] == "pt_1"
    assert "published_at" in delivered


def test_sync_repeat_with_the_same_key_stores_once(redis_server: RedisServer) -> None:
    keys = RedisKeys(prefix())
    with SyncPublisher.from_url(redis_server.url, key_prefix=keys.prefix) as publisher:
        first = publisher.publish(event("pt_1"), idempotency_key="order-17-moved")
        again = publisher.publish(event("pt_1"), idempotency_key="order-17-moved")
        with pytest.raises(IdempotencyKeyReusedError):
            publisher.publish(event("pt_1", "ap_other"), idempotency_key="order-17-moved")
    assert again == first
    with redis_server.client() as client:
        assert history(client, keys, "pt_1") == [first]


@pytest.fixture(params=["standalone", "cluster"])
def environ(request: pytest.FixtureRequest) -> dict[str, str]:
    """The `NOTIFY_*` variables of a backend using the harness' Redis (a sync
    fixture: starting the session's cluster must not block a test's loop)."""
    if request.param == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return {"NOTIFY_REDIS_MODE": "cluster", "NOTIFY_REDIS_URL": cluster.url}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"NOTIFY_REDIS_URL": server.url}


async def test_async_publish_many_returns_ids_in_order(environ: dict[str, str]) -> None:
    keys = RedisKeys(prefix())
    environ["NOTIFY_KEY_PREFIX"] = keys.prefix
    events = [event(f"pt_{i % 7}", f"ap_{i}") for i in range(50)]
    async with Publisher.from_env(environ) as publisher:
        ids = await publisher.publish_many(events)
        one = await publisher.publish(EventCreate.model_validate(event("pt_0", "ap_last")))
    assert len(ids) == 50
    # Stream ids are per patient: each patient's are new and in the order given.
    for patient in {e["patient_id"] for e in events}:
        mine = [i for i, e in zip(ids, events, strict=True) if e["patient_id"] == patient]
        assert mine == sorted(set(mine), key=lambda i: tuple(map(int, i.split("-"))))
    assert one not in [i for i, e in zip(ids, events, strict=True) if e["patient_id"] == "pt_0"]


def test_a_rule_violation_is_refused_before_anything_is_sent(redis_server: RedisServer) -> None:
    with (
        SyncPublisher.from_url(redis_server.url, key_prefix=prefix()) as publisher,
        pytest.raises(InvalidEventError, match="starts_at"),
    ):
        publisher.publish(event("pt_1", starts_at="2026-12-01T15:00:00Z"))


@pytest.mark.parametrize(
    ("environ", "setting"),
    [
        ({"NOTIFY_REDIS_URL": "memory://"}, "NOTIFY_REDIS_URL=memory://"),
        ({}, "NOTIFY_REDIS_URL is not set"),
        ({"NOTIFY_REDIS_MODE": "sentinel"}, "NOTIFY_REDIS_SENTINELS"),
        ({"NOTIFY_REDIS_MODE": "cluster"}, "NOTIFY_REDIS_CLUSTER_NODES"),
        ({"NOTIFY_REDIS_MODE": "shards"}, "NOTIFY_REDIS_MODE"),
        (
            {"NOTIFY_REDIS_URL": "redis://x", "NOTIFY_HISTORY_MAXLEN": "many"},
            "NOTIFY_HISTORY_MAXLEN",
        ),
    ],
)
def test_settings_that_cannot_publish_name_the_setting(
    environ: dict[str, str], setting: str
) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        PublisherConfig.from_env(environ)
    with pytest.raises(ConfigurationError, match=setting):
        SyncPublisher.from_env(environ)


def test_standalone_settings_pointed_at_a_cluster_node_name_the_mode(
    redis_cluster: LocalCluster,
) -> None:
    publisher = SyncPublisher.from_url(redis_cluster.url)
    with pytest.raises(ConfigurationError, match="NOTIFY_REDIS_MODE=cluster"):
        publisher.publish(event("pt_1"))
    publisher.close()


def test_sync_cluster_settings_pointed_at_one_server_name_the_mode(
    redis_server: RedisServer,
) -> None:
    publisher = SyncPublisher.from_env(
        {"NOTIFY_REDIS_MODE": "cluster", "NOTIFY_REDIS_URL": redis_server.url}
    )
    with pytest.raises(ConfigurationError, match="NOTIFY_REDIS_MODE"):
        publisher.publish(event("pt_1"))
    publisher.close()


async def test_cluster_settings_pointed_at_one_server_name_the_mode(
    redis_server: RedisServer,
) -> None:
    publisher = Publisher.from_env(
        {"NOTIFY_REDIS_MODE": "cluster", "NOTIFY_REDIS_URL": redis_server.url}
    )
    with pytest.raises(ConfigurationError, match="NOTIFY_REDIS_MODE"):
        await publisher.publish(event("pt_1"))
    await publisher.aclose()
