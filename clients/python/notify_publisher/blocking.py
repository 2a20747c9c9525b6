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
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from notify_publisher.batch import (
    RETRY_ON,
    Durability,
    Moved,
    Outcome,
    backoff_s,
    by_node,
    ids_or_raise,
    in_order,
    outcomes,
    primary,
    queue,
    script_missing,
    unreachable,
)
from notify_publisher.config import PublisherConfig
from notify_publisher.errors import ConfigurationError
from notify_publisher.events import EventCreate
from notify_publisher.plan import (
    Configured,
    Plan,
    cluster_options,
    node_options,
    not_a_cluster,
    pool_options,
    primary_options,
    standalone_problem,
    unanswered,
)
from notify_publisher.request import SCRIPT, PublishRequest, PublishResult
from notify_publisher.topology import RedisMode

EventInput = EventCreate | Mapping[str, Any]


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
            except (*RETRY_ON, Moved) as exc:
                # In Cluster a lost node may have been replaced: read the slot
                # map again (a no-op for one server).
                last = exc
                self._refresh(exc)
        raise unreachable(self._retries) from last

    def _once(
        self, requests: Sequence[PublishRequest], durability: Durability | None
    ) -> list[Outcome]:
        client = self._client
        if not isinstance(client, RedisCluster):
            return self._on(client, requests, durability)
        nodes: dict[str, Redis] = {}

        def node_name(key: str) -> str:
            node = primary(client, key)
            name: str = node.name
            if name not in nodes:
                nodes[name] = client.get_redis_connection(node)
            return name

        groups = by_node(requests, node_name)
        answers = [
            self._on(nodes[name], [requests[i] for i in indexes], durability)
            for name, indexes in groups.items()
        ]
        return in_order(len(requests), groups.values(), answers)

    def _refresh(self, failure: BaseException) -> None:
        if isinstance(self._client, RedisCluster):
            if isinstance(failure, Moved) and failure.redirect is not None:
                # The node that had the slot named its new owner: go there
                # (the map of a node not told yet would send us back).
                self._client.nodes_manager.move_slot(failure.redirect)
                return
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
    no_retry = Retry(NoBackoff(), retries=0)
    if topology.mode is RedisMode.CLUSTER:
        cluster = RedisCluster(
            startup_nodes=[
                ClusterNode(h, p)  # type: ignore[no-untyped-call]
                for h, p in topology.seed_addresses()
            ],
            retry=no_retry,
            **cluster_options(config),
        )
        return cluster, None
    if topology.mode is RedisMode.SENTINEL:
        assert topology.sentinel_master is not None  # checked by PublisherConfig
        sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            list(topology.nodes),
            sentinel_kwargs=Plan.sentinel_kwargs(config),
            db=topology.db,
            **node_options(config),
        )
        client: Redis = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
            topology.sentinel_master,
            connection_pool_class=_BlockingSentinelPool,
            retry=no_retry,
            **primary_options(config),
        )
        return client, sentinel
    assert topology.url is not None  # checked by PublisherConfig
    pool = BlockingConnectionPool.from_url(topology.url, retry=no_retry, **pool_options(config))
    return Redis(connection_pool=pool), None


class SyncPublisher(Configured):
    """Publishes appointment events from blocking code; safe from many threads.

        with SyncPublisher.from_env() as publisher:
            event_id = publisher.publish(event)

    Every publish is idempotent: `idempotency_key=` names the event for your own
    retries (remembered `NOTIFY_IDEMPOTENCY_TTL_S`); without one the publisher
    makes one up and reuses it for its own retries of a lost connection.
    """

    def __init__(self, config: PublisherConfig) -> None:
        super().__init__(config)
        # Nothing connects before the first publish (or `connect()`): a Celery
        # worker may build its publisher at import time, before it forks.
        self._client: Redis | RedisCluster | None = None
        self._sentinel: Sentinel | None = None
        self._runner: SyncRunner | None = None
        self._plan = Plan(config)
        self._checked = False
        self._check_lock = threading.Lock()

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
                if self._client is None:
                    self._client, self._sentinel = _sync_client(self.config)
                    self._runner = SyncRunner(self._client, retries=self.config.retries)
                self._check()
            except RedisClusterException as exc:
                # A Cluster client reads the slot map as it is built.
                if "not enabled" in str(exc):
                    raise ConfigurationError(not_a_cluster(self.config)) from exc
                raise unanswered(self.config) from exc
            except RETRY_ON as exc:
                raise unanswered(self.config) from exc
            self._checked = True

    def _check(self) -> None:
        assert self._client is not None
        if isinstance(self._client, RedisCluster):
            return  # RedisCluster() read the slot map already (or raised)
        server = self._client.info("server")
        replication = self._client.info("replication")
        problem = standalone_problem(self.config, server, replication)
        if problem is not None:
            raise problem

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
        assert self._runner is not None
        return ids_or_raise(self._runner.run(requests, durability))

    def close(self) -> None:
        """Close every connection (the publisher cannot be used afterwards)."""
        if self._client is None:
            return
        self._client.close()
        if isinstance(self._client, Redis):
            self._client.connection_pool.disconnect()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                sentinel.close()
