"""The tests' own bare redis-py clients (`tests/support/raw_redis.py`) leave no
socket behind once closed, on both topologies.

A socket left to the collector is a `ResourceWarning` raised wherever the next
collection happens to run: an error in an unrelated later test (the suite turns
warnings into errors). `redis.RedisCluster.from_url` did that with its seed
node's connection.
"""

from __future__ import annotations

import gc
import warnings

from service.config import Settings
from tests.support.raw_redis import async_client, sync_client

KEYS = 60  # spread over every shard of the harness cluster
# Whether `from_url`'s client left its socket depended on the slot map's order
# (three runs in four): every round is a client of its own.
ROUNDS = 8


def unclosed_sockets(caught: list[warnings.WarningMessage]) -> list[str]:
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, ResourceWarning) and "socket" in str(w.message)
    ]


def test_sync_client_leaves_no_socket(settings: Settings) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(ROUNDS):
            with sync_client(settings) as client:
                for i in range(KEYS):
                    client.set(f"{settings.key_prefix}close:{i}", i)
            del client
            gc.collect()
    assert not unclosed_sockets(caught)


async def test_async_client_leaves_no_socket(settings: Settings) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(ROUNDS):
            client = async_client(settings)
            try:
                for i in range(KEYS):
                    await client.set(f"{settings.key_prefix}close:{i}", i)
            finally:
                await client.aclose()
            del client
            gc.collect()
    assert not unclosed_sockets(caught)
