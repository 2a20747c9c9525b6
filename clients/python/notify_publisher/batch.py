"""Running `publish.lua` for a batch of requests on one connection, the same way
for the asyncio and the blocking client.

One pipeline per connection: every request's `EVALSHA`, then (durable) one
`WAIT replicas timeout` on the same connection: WAIT cannot run inside a
script, and it counts the replicas that acknowledged every write this
connection made, so one WAIT covers the whole batch. In Cluster a batch is
split by shard primary (each key's slot), one pipeline each.

Every request carries an idempotency key (the library makes one up when the
caller gives none), so a batch whose connection dropped can be sent again as a
whole: what was stored is replayed, never stored twice.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from notify_publisher.errors import NotDurableError, PublisherError, PublishRefusedError
from notify_publisher.request import SCRIPT_SHA, PublishRequest, PublishResult, parse_reply, refusal

# Errors after which the whole batch is sent again (same keys): the connection
# was lost or timed out (BusyLoadingError is a ConnectionError: a restarting
# Redis), or, in Cluster and Sentinel, the slot or the primary moved.
RETRY_ON: Final = (RedisConnectionError, RedisTimeoutError, OSError)
MOVED: Final = (AskError, ClusterDownError, TryAgainError, ReadOnlyError)
# Margin of the "in flight" mark over WAIT's own timeout.
HOLD_MARGIN_MS: Final = 2000


@dataclass(frozen=True, slots=True)
class Durability:
    """Wait for `replicas` to confirm, at most `timeout_ms` (WAIT)."""

    replicas: int
    timeout_ms: int

    @property
    def hold_ms(self) -> int:
        return self.timeout_ms + HOLD_MARGIN_MS


Outcome = PublishResult | PublisherError


class Moved(Exception):
    """A Cluster slot or a primary moved: refresh, then send the batch again.
    `redirect` is the server's MOVED reply when there was one: it names the
    slot's new primary, which a slot map read from another node may not know
    yet (gossip takes a moment to reach every node)."""

    def __init__(self, message: str, redirect: MovedError | None = None) -> None:
        super().__init__(message)
        self.redirect = redirect


def unreachable(retries: int) -> PublishRefusedError:
    """What a runner raises once every attempt (`retries` + 1) lost Redis."""
    return PublishRefusedError("unavailable", f"Redis unreachable after {retries + 1} attempts")


def primary(cluster: Any, key: str) -> Any:
    """The shard primary `cluster` (an asyncio or a blocking `RedisCluster`) knows
    for `key`'s slot; `Moved` when it knows none."""
    try:
        return cluster.nodes_manager.get_node_from_slot(cluster.keyslot(key))
    except (KeyError, SlotNotCoveredError) as exc:
        raise Moved(f"no primary known for {key}") from exc


def by_node(
    requests: Sequence[PublishRequest], node_of: Callable[[str], str]
) -> dict[str, list[int]]:
    """The requests' indexes grouped by the node (name) of their first key."""
    groups: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(node_of(request.keys[0]), []).append(index)
    return groups


def in_order(
    count: int, groups: Iterable[list[int]], answers: Iterable[Sequence[Outcome]]
) -> list[Outcome]:
    """The per-node answers put back in the order of the `count` requests."""
    results: list[Outcome | None] = [None] * count
    for indexes, answer in zip(groups, answers, strict=True):
        for index, outcome in zip(indexes, answer, strict=True):
            results[index] = outcome
    return [r for r in results if r is not None]


def queue(pipe: Any, requests: Sequence[PublishRequest], durability: Durability | None) -> None:
    for request in requests:
        pipe.evalsha(SCRIPT_SHA, len(request.keys), *request.keys, *request.args)
    if durability is not None:
        pipe.execute_command("WAIT", durability.replicas, durability.timeout_ms)


def script_missing(replies: Sequence[Any]) -> bool:
    """A new server (or after SCRIPT FLUSH, a failover): load it and send again."""
    return any(isinstance(reply, NoScriptError) for reply in replies)


def moved(replies: Sequence[Any]) -> BaseException | None:
    """The first reply that says the slot or the primary moved, if any."""
    return next((reply for reply in replies if isinstance(reply, MOVED)), None)


def outcomes(
    requests: Sequence[PublishRequest], replies: Sequence[Any], durability: Durability | None
) -> tuple[list[Outcome], list[str]]:
    """Each request's result or error, and the records whose in-flight mark the
    caller must clear (after WAIT); `Moved` when a reply says the slot or the
    primary moved."""
    redirect = moved(replies)
    if redirect is not None:
        raise Moved(str(redirect), redirect if isinstance(redirect, MovedError) else None)
    results: list[Outcome] = []
    for reply in replies[: len(requests)]:
        if isinstance(reply, BaseException):
            results.append(
                refusal(reply) if isinstance(reply, Exception) else PublishRefusedError("error")
            )
        else:
            results.append(parse_reply(reply))
    release = [
        request.record_key
        for request, result in zip(requests, results, strict=True)
        if request.holds and request.record_key is not None and isinstance(result, PublishResult)
    ]
    if durability is not None:
        confirmed = replies[len(requests)]
        count = 0 if isinstance(confirmed, BaseException) else int(confirmed)
        if count < durability.replicas:
            results = [
                NotDurableError(event_id=r.id, wanted=durability.replicas, confirmed=count)
                if isinstance(r, PublishResult)
                else r
                for r in results
            ]
    return results, release


def backoff_s(attempt: int) -> float:
    """50 ms doubling to 1 s, jittered: retries of many publishers spread out."""
    return float(min(1.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))  # noqa: S311


def ids_or_raise(results: Sequence[Outcome]) -> list[PublishResult]:
    """The results, or the first error (the other events of the batch were
    handled: a retry with the same keys stores only the missing ones)."""
    for result in results:
        if isinstance(result, PublisherError):
            raise result
    return [r for r in results if isinstance(r, PublishResult)]
