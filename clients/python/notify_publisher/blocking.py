"""`SyncPublisher`: publish appointment events from blocking code (Django, Flask,
Celery or RQ workers). One instance per process, shared by every thread: its
connection pool hands each call its own connection."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from redis import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError, SlotNotCoveredError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from notify_publisher.batch import (
    RETRY_ON,
    Durability,
    Outcome,
    backoff_s,
    ids_or_raise,
    moved,
    outcomes,
    queue,
    script_missing,
)
from notify_publisher.config import PublisherConfig
from notify_publisher.errors import ConfigurationError, PublishRefusedError
from notify_publisher.events import EventCreate
from notify_publisher.plan import Plan, node_options
from notify_publisher.request import SCRIPT, PublishRequest, PublishResult
from notify_publisher.topology import RedisMode, mismatch

EventInput = EventCreate | Mapping[str, Any]


class _Moved(Exception):
    """A Cluster slot or a primary moved: refresh, then send the batch again."""


class SyncRunner:
    """`AsyncRunner`'s blocking twin (see `notify_publisher.aio`)."""

    def __init__(self, client: Redis | RedisCluster, *, retries: int) -> None:
        self._client = client
        self._retries = retries

    def run(
        self, requests: Sequence[PublishRequest], durability: Durability | None
    ) -> list[Outcome]:
        last: BaseException | None = None
        for attempt in range(self._retries + 1):
            if attempt:
                time.sleep(backoff_s(attempt - 1))
            try:
                return self._once(requests, durability)
            except (*RETRY_ON, _Moved) as exc:
                # In Cluster a lost node may have been replaced: read the slot
                # map again (a no-op for one server).
                last = exc
                self._refresh()
        raise PublishRefusedError(
            "unavailable", f"Redis unreachable after {self._retries + 1} attempts"
        ) from last

    def _once(
        self, requests: Sequence[PublishRequest], durability: Durability | None
    ) -> list[Outcome]:
        client = self._client
        if not isinstance(client, RedisCluster):
            return self._on(client, requests, durability)
        groups: dict[str, tuple[Redis, list[int]]] = {}
        for index, request in enumerate(requests):
            try:
                node = client.nodes_manager.get_node_from_slot(
                    client.keyslot(request.keys[0])  # type: ignore[no-untyped-call]
                )
            except (KeyError, SlotNotCoveredError) as exc:
                raise _Moved(f"no primary known for {request.keys[0]}") from exc
            if node.name not in groups:
                groups[node.name] = (client.get_redis_connection(node), [])
            groups[node.name][1].append(index)
        results: list[Outcome | None] = [None] * len(requests)
        for node_client, indexes in groups.values():
            answer = self._on(node_client, [requests[i] for i in indexes], durability)
            for index, outcome in zip(indexes, answer, strict=True):
                results[index] = outcome
        return [r for r in results if r is not None]

    def _refresh(self) -> None:
        if isinstance(self._client, RedisCluster):
            try:
                self._client.nodes_manager.initialize()
            except (*RETRY_ON, RedisError, RedisClusterException):
                return  # the next attempt tries again

    def _on(
        self, client: Redis, requests: Sequence[PublishRequest], durability: Durability | None
    ) -> list[Outcome]:
        for _ in range(2):
            with client.pipeline(transaction=False) as pipe:
                queue(pipe, requests, durability)
                replies = pipe.execute(raise_on_error=False)
            if not script_missing(replies):
                break
            client.script_load(SCRIPT)
        redirect = moved(replies)
        if redirect is not None:
            raise _Moved(str(redirect))
        results, release = outcomes(requests, replies, durability)
        if release:
            with client.pipeline(transaction=False) as pipe:
                for record in release:
                    pipe.hdel(record, "f", "o")
                pipe.execute(raise_on_error=False)
        return results


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Waits up to `timeout` for a free connection, like the standalone pool."""


def _sync_client(config: PublisherConfig) -> tuple[Redis | RedisCluster, Sentinel | None]:
    topology = config.topology
    options = node_options(config)
    no_retry = Retry(NoBackoff(), retries=0)
    if topology.mode is RedisMode.CLUSTER:
        cluster = RedisCluster(
            startup_nodes=[
                ClusterNode(h, p)  # type: ignore[no-untyped-call]
                for h, p in topology.seed_addresses()
            ],
            require_full_coverage=False,
            max_connections=config.max_connections,
            retry=no_retry,
            **options,
        )
        return cluster, None
    if topology.mode is RedisMode.SENTINEL:
        assert topology.sentinel_master is not None  # checked by PublisherConfig
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(topology.nodes),
            sentinel_kwargs=Plan.sentinel_kwargs(config),
            db=topology.db,
            **options,
        )
        client: Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            topology.sentinel_master,
            connection_pool_class=_BlockingSentinelPool,
            max_connections=config.max_connections,
            timeout=config.pool_timeout_s,
            retry=no_retry,
            check_connection=True,
        )
        return client, sentinel
    assert topology.url is not None  # checked by PublisherConfig
    pool = BlockingConnectionPool.from_url(
        topology.url,
        max_connections=config.max_connections,
        timeout=config.pool_timeout_s,
        retry=no_retry,
        **{k: v for k, v in options.items() if v is not None and k != "ssl"},
    )
    return Redis(connection_pool=pool), None


class SyncPublisher:
    """Publishes appointment events from blocking code; safe from many threads.

        with SyncPublisher.from_env() as publisher:
            event_id = publisher.publish(event)

    Every publish is idempotent: `idempotency_key=` names the event for your own
    retries (remembered `NOTIFY_IDEMPOTENCY_TTL_S`); without one the publisher
    makes one up and reuses it for its own retries of a lost connection.
    """

    def __init__(self, config: PublisherConfig) -> None:
        self.config = config
        # Connections are made only when the first publish needs one (a Celery
        # worker may build it at import time, before forking).
        self._client, self._sentinel = _sync_client(config)
        self._runner = SyncRunner(self._client, retries=config.retries)
        self._plan = Plan(config)
        self._checked = False
        self._check_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SyncPublisher:
        """A standalone Redis (`redis://`, `rediss://`, `unix://`); `options` are
        `PublisherConfig` fields (`key_prefix`, `wait_replicas`, ...)."""
        return cls(PublisherConfig.from_url(url, **options))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SyncPublisher:
        """From the service's `NOTIFY_REDIS_*` (and other `NOTIFY_*`) variables."""
        return cls(PublisherConfig.from_env(environ))

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Reach Redis and check it is of the configured kind (done by the first
        publish otherwise): `ConfigurationError` naming the setting when not."""
        with self._check_lock:
            if self._checked:
                return
            try:
                self._check()
            except RETRY_ON as exc:
                raise PublishRefusedError(
                    "unavailable", f"Redis ({self.config.topology.describe()}) did not answer"
                ) from exc
            self._checked = True

    def _check(self) -> None:
        topology = self.config.topology
        if isinstance(self._client, RedisCluster):
            return  # RedisCluster() read the slot map already (or raised)
        server = self._client.info("server")
        replication = self._client.info("replication")
        problem = mismatch(
            RedisMode.STANDALONE,
            topology.describe(),
            str(server.get("redis_mode", "standalone")),
            str(replication.get("role", "master")),
        )
        if problem is not None:
            raise ConfigurationError(problem)

    def publish(
        self,
        event: EventInput,
        *,
        idempotency_key: str | None = None,
        wait_replicas: int | None = None,
    ) -> str:
        """Store `event` in its patient's history and deliver it live; returns its
        id. `wait_replicas` (default `NOTIFY_PUBLISH_WAIT_REPLICAS`) makes it wait
        for that many replicas, else `NotDurableError`."""
        (result,) = self.publish_results(
            [event], idempotency_keys=[idempotency_key], wait_replicas=wait_replicas
        )
        return result.id

    def publish_many(
        self,
        events: Sequence[EventInput],
        *,
        idempotency_keys: Sequence[str | None] | None = None,
        wait_replicas: int | None = None,
    ) -> list[str]:
        """Publish every event in one pipeline (one per shard in Cluster); the ids
        in order. Events of one patient are stored in the order given."""
        results = self.publish_results(
            events, idempotency_keys=idempotency_keys, wait_replicas=wait_replicas
        )
        return [r.id for r in results]

    def publish_results(
        self,
        events: Sequence[EventInput],
        *,
        idempotency_keys: Sequence[str | None] | None = None,
        wait_replicas: int | None = None,
    ) -> list[PublishResult]:
        """Like `publish_many`, with whether each was a replay of its key."""
        requests, durability = self._plan.requests(events, idempotency_keys, wait_replicas)
        if not requests:
            return []
        self.connect()
        return ids_or_raise(self._runner.run(requests, durability))

    def close(self) -> None:
        """Close every connection (the publisher cannot be used afterwards)."""
        self._client.close()
        if isinstance(self._client, Redis):
            self._client.connection_pool.disconnect()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                sentinel.close()
