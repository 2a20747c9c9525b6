"""`Publisher`: publish appointment events from asyncio code."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError, ResponseError

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


class AsyncRunner:
    """Runs batches of `publish.lua` on an asyncio client: a `Redis` (standalone,
    or Sentinel-managed) or a `RedisCluster` (one pipeline per shard primary, on
    per-node clients built with `cluster_node_options`). The service's brokers
    run their publishes through it too."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        retries: int,
        cluster_node_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._client = client
        self._retries = retries
        self._node_options = dict(cluster_node_options or {})
        self._nodes: dict[str, Redis] = {}

    async def run(
        self, requests: Sequence[PublishRequest], durability: Durability | None
    ) -> list[Outcome]:
        """Each request's outcome, in order; `PublishRefusedError("unavailable")`
        when Redis stayed unreachable through every retry."""
        last: BaseException | None = None
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(backoff_s(attempt - 1))
            try:
                return await self._once(requests, durability)
            except (*RETRY_ON, Moved) as exc:
                # In Cluster a lost node may have been replaced: read the slot
                # map again (a no-op for one server).
                last = exc
                await self._refresh(exc)
        raise unreachable(self._retries) from last

    async def _once(
        self, requests: Sequence[PublishRequest], durability: Durability | None
    ) -> list[Outcome]:
        if not isinstance(self._client, RedisCluster):
            return await self._on(self._client, requests, durability)
        # Reads the slot map once (at once when the client already did).
        try:
            await self._client.initialize()
        except (RedisClusterException, ResponseError) as exc:
            raise Moved("no slot map") from exc
        groups = by_node(requests, self._node_name)
        answers = await asyncio.gather(
            *(
                self._on(self._nodes[name], [requests[i] for i in indexes], durability)
                for name, indexes in groups.items()
            )
        )
        return in_order(len(requests), groups.values(), answers)

    def _node_name(self, key: str) -> str:
        node = primary(self._client, key)
        name: str = node.name
        if name not in self._nodes:
            # No retries inside redis-py (its default backs off for seconds on a
            # dead node): `run` retries, after reading the slot map again.
            self._nodes[name] = Redis(
                host=node.host,
                port=int(node.port),
                retry=Retry(NoBackoff(), retries=0),
                **self._node_options,
            )
        return name

    async def _refresh(self, failure: BaseException) -> None:
        if isinstance(self._client, RedisCluster):
            if isinstance(failure, Moved) and failure.redirect is not None:
                # The node that had the slot named its new owner: go there
                # (the map of a node not told yet would send us back).
                await self._client.nodes_manager.move_slot(failure.redirect)
                return
            try:
                await self._client.nodes_manager.initialize()
            except (*RETRY_ON, RedisError, RedisClusterException):
                return  # the next attempt tries again

    async def _on(
        self, client: Redis, requests: Sequence[PublishRequest], durability: Durability | None
    ) -> list[Outcome]:
        for _ in range(2):
            async with client.pipeline(transaction=False) as pipe:
                queue(pipe, requests, durability)
                replies = await pipe.execute(raise_on_error=False)
            if not script_missing(replies):
                break
            await client.script_load(SCRIPT)
        results, release = outcomes(requests, replies, durability)
        if release:
            async with client.pipeline(transaction=False) as pipe:
                for record in release:
                    pipe.hdel(record, "f", "o")
                await pipe.execute(raise_on_error=False)
        return results

    async def aclose(self) -> None:
        for node in self._nodes.values():
            await node.aclose()
        self._nodes.clear()


def _async_client(config: PublisherConfig) -> tuple[Redis | RedisCluster, Sentinel | None]:
    topology = config.topology
    no_retry = Retry(NoBackoff(), retries=0)
    if topology.mode is RedisMode.CLUSTER:
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in topology.seed_addresses()],
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
        client: Redis = sentinel.master_for(
            topology.sentinel_master,
            connection_pool_class=_BlockingSentinelPool,
            retry=no_retry,
            **primary_options(config),
        )
        return client, sentinel
    assert topology.url is not None  # checked by PublisherConfig
    pool = BlockingConnectionPool.from_url(topology.url, retry=no_retry, **pool_options(config))
    return Redis(connection_pool=pool), None


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Waits up to `timeout` for a free connection, like the standalone pool."""


class Publisher(Configured):
    """Publishes appointment events from asyncio code (one per process, shared).

        async with Publisher.from_env() as publisher:
            event_id = await publisher.publish(event)

    Every publish is idempotent: `idempotency_key=` names the event for your own
    retries (remembered `NOTIFY_IDEMPOTENCY_TTL_S`); without one the publisher
    makes one up and reuses it for its own retries of a lost connection.
    """

    def __init__(self, config: PublisherConfig) -> None:
        super().__init__(config)
        self._client, self._sentinel = _async_client(config)
        self._runner = AsyncRunner(
            self._client,
            retries=config.retries,
            cluster_node_options=node_options(config),
        )
        self._plan = Plan(config)
        self._checked = False
        self._check_lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Reach Redis and check it is of the configured kind (done by the first
        publish otherwise): `ConfigurationError` naming the setting when not."""
        async with self._check_lock:
            if self._checked:
                return
            try:
                await self._check()
            except RETRY_ON as exc:
                raise unanswered(self.config) from exc
            self._checked = True

    async def _check(self) -> None:
        if isinstance(self._client, RedisCluster):
            try:
                await self._client.initialize()
            except RedisClusterException as exc:
                raise ConfigurationError(f"{not_a_cluster(self.config)} ({exc})") from exc
            return
        server = await self._client.info("server")
        replication = await self._client.info("replication")
        problem = standalone_problem(self.config, server, replication)
        if problem is not None:
            raise problem

    async def publish(
        self,
        event: EventInput,
        *,
        idempotency_key: str | None = None,
        wait_replicas: int | None = None,
    ) -> str:
        """Store `event` in its patient's history and deliver it live; returns its
        id. `wait_replicas` (default `NOTIFY_PUBLISH_WAIT_REPLICAS`) makes it wait
        for that many replicas, else `NotDurableError`."""
        (result,) = await self.publish_results(
            [event], idempotency_keys=[idempotency_key], wait_replicas=wait_replicas
        )
        return result.id

    async def publish_many(
        self,
        events: Sequence[EventInput],
        *,
        idempotency_keys: Sequence[str | None] | None = None,
        wait_replicas: int | None = None,
    ) -> list[str]:
        """Publish every event in one pipeline (one per shard in Cluster); the ids
        in order. Events of one patient are stored in the order given."""
        results = await self.publish_results(
            events, idempotency_keys=idempotency_keys, wait_replicas=wait_replicas
        )
        return [r.id for r in results]

    async def publish_results(
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
        await self.connect()
        return ids_or_raise(await self._runner.run(requests, durability))

    async def aclose(self) -> None:
        """Close every connection (the publisher cannot be used afterwards)."""
        await self._runner.aclose()
        await self._client.aclose()
        if isinstance(self._client, Redis):
            await self._client.connection_pool.disconnect()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                await sentinel.aclose()


__all__ = ["AsyncRunner", "Publisher"]
