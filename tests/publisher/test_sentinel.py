"""The publisher with Sentinel: it finds the primary through the Sentinels, a
durable publish is confirmed by the replica, and an event acknowledged durably
is on the new primary after the old one is killed (-9) and replaced."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from notify_publisher import Publisher, SyncPublisher

from tests.support.events import event
from tests.support.redis_server import RedisServer
from tests.support.redis_topologies import LocalSentinel


@pytest.fixture
def sentinel() -> Iterator[LocalSentinel]:
    group = LocalSentinel()
    group.start()
    yield group
    group.stop()


def environ(group: LocalSentinel, prefix: str) -> dict[str, str]:
    return {
        "NOTIFY_REDIS_MODE": "sentinel",
        "NOTIFY_REDIS_SENTINELS": group.addresses,
        "NOTIFY_REDIS_SENTINEL_MASTER": group.master_name,
        "NOTIFY_KEY_PREFIX": prefix,
        "NOTIFY_PUBLISH_WAIT_TIMEOUT_MS": "2000",
    }


def history(server: RedisServer, prefix: str, patient: str) -> list[str]:
    client = server.client()
    try:
        entries: list[tuple[bytes, object]] = client.xrange(f"{prefix}history:{{{patient}}}")  # type: ignore[assignment]
        return [entry_id.decode() for entry_id, _ in entries]
    finally:
        client.close()


def test_a_durable_publish_survives_the_primary_killed_right_after(
    sentinel: LocalSentinel,
) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}:"
    with SyncPublisher.from_env(environ(sentinel, prefix)) as publisher:
        ids = publisher.publish_many([event("pt_1", f"ap_{i}") for i in range(5)])
        durable = publisher.publish(event("pt_1", "ap_durable"), wait_replicas=1)
        survivor = sentinel.kill_primary()
        sentinel.wait_failover(survivor)
        assert history(survivor, prefix, "pt_1") == [*ids, durable]
        # The same publisher follows the Sentinels to the new primary.
        after = publisher.publish(event("pt_1", "ap_after"))
    assert history(survivor, prefix, "pt_1") == [*ids, durable, after]


async def test_the_asyncio_publisher_finds_the_primary(sentinel: LocalSentinel) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}:"
    async with Publisher.from_env(environ(sentinel, prefix)) as publisher:
        first = await publisher.publish(event("pt_2"), idempotency_key="a-1", wait_replicas=1)
        again = await publisher.publish(event("pt_2"), idempotency_key="a-1")
    assert again == first
