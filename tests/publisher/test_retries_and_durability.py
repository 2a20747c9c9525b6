"""What a backend relies on when things go wrong: a reply lost after the script
ran is retried with the same idempotency key (stored once), and a durable
publish is confirmed by replicas or refused with `NotDurableError`."""

from __future__ import annotations

import uuid

import pytest
from notify_publisher import SCRIPT, NotDurableError, Publisher, PublishRefusedError, SyncPublisher
from notify_publisher.keys import RedisKeys
from redis.cluster import RedisCluster

from tests.support.events import event
from tests.support.redis_server import RedisServer
from tests.support.redis_topologies import LocalCluster
from tests.support.slot_map import stale_slot_map
from tests.support.tcp_proxy import ReplyDroppingProxy


def keys() -> RedisKeys:
    return RedisKeys(f"r{uuid.uuid4().hex[:8]}:")


def history(server: RedisServer, names: RedisKeys, patient: str = "pt_1") -> list[str]:
    client = server.client()
    try:
        entries: list[tuple[bytes, object]] = client.xrange(names.history(patient))  # type: ignore[assignment]
        return [entry_id.decode() for entry_id, _ in entries]
    finally:
        client.close()


def preload_script(server: RedisServer) -> None:
    """So that the first EVALSHA runs the script (not NOSCRIPT): the proxy then
    drops the reply of a publish that happened."""
    with server.client() as client:
        client.script_load(SCRIPT)


@pytest.mark.parametrize("given_key", [None, "job-99"])
def test_a_lost_reply_is_retried_and_stored_once(
    redis_server: RedisServer, given_key: str | None
) -> None:
    names = keys()
    preload_script(redis_server)
    with (
        ReplyDroppingProxy(("127.0.0.1", redis_server.port), drop_reply_after=b"EVALSHA") as proxy,
        SyncPublisher.from_url(
            f"redis://127.0.0.1:{proxy.port}/0", key_prefix=names.prefix
        ) as publisher,
    ):
        event_id = publisher.publish(event("pt_1"), idempotency_key=given_key)
    assert proxy.dropped.is_set(), "the proxy never dropped a reply: the test proved nothing"
    assert history(redis_server, names) == [event_id]


async def test_a_lost_reply_of_a_batch_is_retried_and_each_event_stored_once(
    redis_server: RedisServer,
) -> None:
    names = keys()
    preload_script(redis_server)
    events = [event(f"pt_{i % 3}", f"ap_{i}") for i in range(30)]
    with ReplyDroppingProxy(("127.0.0.1", redis_server.port), drop_reply_after=b"EVALSHA") as proxy:
        async with Publisher.from_url(
            f"redis://127.0.0.1:{proxy.port}/0", key_prefix=names.prefix
        ) as publisher:
            ids = await publisher.publish_many(events)
    assert proxy.dropped.is_set()
    for patient in ("pt_0", "pt_1", "pt_2"):
        mine = [i for i, e in zip(ids, events, strict=True) if e["patient_id"] == patient]
        assert history(redis_server, names, patient) == mine


def test_unreachable_redis_is_publish_refused_unavailable() -> None:
    publisher = SyncPublisher.from_url("redis://127.0.0.1:1/0", retries=1)
    with pytest.raises(PublishRefusedError) as refused:
        publisher.publish(event("pt_1"))
    assert refused.value.cause == "unavailable"
    publisher.close()


def test_durable_without_replicas_is_not_durable_and_a_retry_stores_nothing(
    redis_server: RedisServer,
) -> None:
    names = keys()
    with SyncPublisher.from_url(
        redis_server.url, key_prefix=names.prefix, wait_timeout_ms=200
    ) as publisher:
        with pytest.raises(NotDurableError) as refused:
            publisher.publish(event("pt_1"), idempotency_key="k1", wait_replicas=1)
        assert refused.value.cause == "not_durable"
        assert (refused.value.wanted, refused.value.confirmed) == (1, 0)
        with pytest.raises(NotDurableError) as again:
            publisher.publish(event("pt_1"), idempotency_key="k1", wait_replicas=1)
        # Without the option the same key answers the stored id, a replay.
        (replayed,) = publisher.publish_results([event("pt_1")], idempotency_keys=["k1"])
    assert again.value.event_id == refused.value.event_id == replayed.id
    assert replayed.replayed
    assert history(redis_server, names) == [replayed.id]


async def test_durable_with_a_replica_is_confirmed(redis_cluster: LocalCluster) -> None:
    """The harness' cluster has one replica per primary: WAIT 1 confirms."""
    names = keys()
    environ = {
        "NOTIFY_REDIS_MODE": "cluster",
        "NOTIFY_REDIS_URL": redis_cluster.url,
        "NOTIFY_KEY_PREFIX": names.prefix,
        "NOTIFY_PUBLISH_WAIT_REPLICAS": "1",
    }
    async with Publisher.from_env(environ) as publisher:
        ids = await publisher.publish_many([event(f"pt_{i}", "ap_1") for i in range(20)])
        with pytest.raises(NotDurableError):
            await publisher.publish(event("pt_1"), wait_replicas=2)
    assert len(ids) == 20


@pytest.mark.slow
def test_a_publish_after_a_failover_follows_moved_when_the_slot_map_is_stale() -> None:
    """A backend's SyncPublisher knew the map from before a `CLUSTER FAILOVER`;
    every node it could ask still answers with that map (gossip not there yet).
    The demoted primary's MOVED names the new one: the publish goes there, once."""
    cluster = LocalCluster()
    cluster.start()
    try:
        primary = cluster.primary_nodes()[0]
        patient = next(
            f"pt_{i}" for i in range(10_000) if cluster.primary_for(f"pt_{i}").port == primary.port
        )
        (replica,) = cluster.replicas_of(primary)
        names = keys()
        environ = {
            "NOTIFY_REDIS_MODE": "cluster",
            "NOTIFY_REDIS_URL": cluster.url,
            "NOTIFY_KEY_PREFIX": names.prefix,
        }
        with SyncPublisher.from_env(environ) as publisher:
            first = publisher.publish(event(patient))
            cluster.manual_failover(replica)
            client = publisher._client
            assert isinstance(client, RedisCluster)
            with stale_slot_map(client.nodes_manager):
                second = publisher.publish(event(patient))
        assert history(replica, names, patient) == [first, second]
    finally:
        cluster.stop()
