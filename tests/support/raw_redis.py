"""Bare redis-py clients, made the way a clinic's backend or an identity provider
would make them, for tests that talk to Redis without the service's code: raw
publishes (`PUBLISH`, or `SPUBLISH` in Cluster, as the README tells publishers)
and key inspection."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from notify_publisher.keys import RedisKeys
from notify_publisher.topology import RedisMode

from service.config import Settings


def is_cluster(settings: Settings) -> bool:
    return settings.redis_mode is RedisMode.CLUSTER


def async_client(settings: Settings) -> Any:
    """`redis.asyncio.Redis`, or `RedisCluster` for a cluster (both close with aclose)."""
    url = settings.effective_redis_url
    if is_cluster(settings):
        return aioredis.RedisCluster.from_url(url)
    return aioredis.from_url(url)


def sync_client(settings: Settings) -> Any:
    """`redis.Redis`, or `RedisCluster` for a cluster (both close with close)."""
    url = settings.effective_redis_url
    if is_cluster(settings):
        # Not `redis.RedisCluster.from_url`: that hands each node a pool of its
        # own making, which the client's `close()` does not disconnect (redis-py
        # 8.1), so a socket was left to the collector: a `ResourceWarning` in
        # whichever later test's phase ran a collection.
        seed = urlsplit(url)
        return redis.RedisCluster(
            host=seed.hostname or "127.0.0.1",
            port=seed.port or 6379,
            username=unquote(seed.username) if seed.username else None,
            password=unquote(seed.password) if seed.password else None,
            ssl=seed.scheme == "rediss",
        )
    return redis.Redis.from_url(url)


async def raw_publish(settings: Settings, patient_id: str, payload: str | bytes) -> int:
    """Publish `payload` on the patient's live channel as a backend would: no
    history entry, no id."""
    channel = RedisKeys(settings.key_prefix).patient_channel(patient_id)
    client = async_client(settings)
    try:
        if is_cluster(settings):
            return int(await client.spublish(channel, payload))
        return int(await client.publish(channel, payload))
    finally:
        await client.aclose()
