"""Redis brokers: one bounded pool and exactly one pub/sub connection per process
(standalone and Sentinel; Cluster has one per shard primary in use, see
`service/brokers/cluster.py`).

The listener owns the pub/sub connection. It subscribes every active channel on
connect, reads in a loop appending every message to the broker's inbox (which the
hub's listener pulls), and on any connection error closes it, waits with capped
exponential backoff and starts over (resubscribing everything, then queueing a
`Resync` so that the hub backfills what was missed). While it is away `listener_up` is False and the
readiness probe says 503. With Sentinel, every (re)connect asks the Sentinels
where the primary is, so the listener follows a failover by itself.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Sequence
from typing import Any, ClassVar, Final

import structlog
from notify_publisher.aio import AsyncRunner
from notify_publisher.batch import Durability, Outcome
from notify_publisher.errors import PublishRefusedError
from notify_publisher.request import PublishRequest, PublishResult
from notify_publisher.topology import RedisMode, RedisTopology, mismatch
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import BusyLoadingError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import metrics
from service.brokers.base import (
    Broker,
    HistoryEntry,
    HistoryPage,
    HistoryRead,
    ReadBatch,
    ReadReplies,
)
from service.brokers.refusals import OTHER, RecentRefusals, refusal_for
from service.failures import BrokerRefusedError, BrokerTopologyError, BrokerUnavailableError

log = structlog.get_logger(__name__)


# Errors that mean "Redis is unreachable or too slow", as opposed to a bug.
UNAVAILABLE: Final = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
# The listener reads with this timeout so it notices `stop()` and runs health checks.
LISTENER_POLL_S: Final = 1.0
# Reconnect backoff: 0.1 s doubling to 5 s, with jitter so pods don't reconnect in step.
BACKOFF_MIN_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
# A SUBSCRIBE that isn't confirmed in this long is left to the reconnect backfill.
SUBSCRIBE_CONFIRM_S: Final = 3.0


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def backoff_delay(attempt: int) -> float:
    return float(min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2**attempt) * random.uniform(0.5, 1))  # noqa: S311


def command_retry() -> Retry:
    """from_url() brings no retries: one quick retry rides over a blip, more would
    only delay the 503 a client can act on."""
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=1)


def no_retry() -> Retry:
    """For pub/sub connections: a silent reconnect inside redis-py would resubscribe
    but hide the gap, and the listener must see every loss to backfill from history."""
    return Retry(NoBackoff(), retries=0)


async def server_kind(client: Any) -> tuple[str, str]:
    """(`redis_mode`, `role`) of the server `client` talks to: "standalone",
    "cluster" or "sentinel"; "master" or "slave"."""
    server = await client.info("server")
    mode = str(server.get("redis_mode", "standalone"))
    if mode == "sentinel":
        return mode, "sentinel"
    replication = await client.info("replication")
    return mode, str(replication.get("role", "master"))


def queue_history_reads(pipe: Any, history_key: str, after_id: str, count: int) -> None:
    """The four reads of one history page: entries after `after_id`, whether the
    stream exists, its first and its newest id."""
    pipe.xrange(history_key, min=f"({after_id}", max="+", count=count)
    pipe.exists(history_key)
    pipe.xrange(history_key, min="-", max="+", count=1)
    pipe.xrevrange(history_key, max="+", min="-", count=1)


def history_page(entries: Any, exists: Any, first: Any, last: Any) -> HistoryPage:
    """A `HistoryPage` from the replies of `queue_history_reads`."""
    return HistoryPage(
        entries=[
            HistoryEntry(
                id=text(entry_id),
                prev=text(fields.get(b"p", b"")),
                payload=text(fields[b"e"]),
            )
            for entry_id, fields in entries
        ],
        exists=bool(exists),
        first_id=text(first[0][0]) if first else None,
        last_id=text(last[0][0]) if last else None,
    )


class RedisCommands(Broker):
    """The commands every Redis topology runs the same way, on `self.client` (a
    `Redis`, or a `RedisCluster` that routes each key to its shard)."""

    client: Any
    # Set once the listener (Cluster: the control connection) is subscribed.
    _ready: asyncio.Event
    refusals: RecentRefusals

    async def wait_listening(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _build_runner(self, cluster_node_options: dict[str, Any] | None = None) -> None:
        # Publishes go through the publisher package's runner: the same pipeline
        # (script, then WAIT on the same connection) as every other publisher.
        # One retry of a lost connection, with the same idempotency key.
        self._runner = AsyncRunner(
            self.client, retries=1, cluster_node_options=cluster_node_options
        )

    async def _call(self, operation: str, coro: Any) -> Any:
        try:
            return await coro
        except (ResponseError, BusyLoadingError) as exc:
            # Up but refusing (BusyLoadingError is a ConnectionError to redis-py).
            raise self._refused(operation, exc) from exc
        except UNAVAILABLE as exc:
            metrics.REDIS_ERRORS.labels(operation=operation).inc()
            raise BrokerUnavailableError(operation) from exc

    def _refused(self, operation: str, exc: RedisError) -> BrokerRefusedError:
        refusal = refusal_for(exc)
        metrics.REDIS_ERRORS.labels(operation=operation).inc()
        metrics.REDIS_REFUSALS.labels(cause=refusal.cause).inc()
        self.refusals.record(refusal.cause)
        if refusal is OTHER:
            # An unlisted reply may be our bug: its code (never its text) is logged.
            log.warning("redis_refused", operation=operation, reply=str(exc)[:16].split(" ")[0])
        return BrokerRefusedError(
            operation,
            cause=refusal.cause,
            message=refusal.message,
            retry_after_s=refusal.retry_after_s,
        )

    def recent_refusals(self) -> list[str]:
        return self.refusals.causes()

    async def ping(self) -> None:
        await self._call("ping", self.client.ping())

    async def publish_events(
        self, requests: Sequence[PublishRequest], durability: Durability | None
    ) -> list[Outcome]:
        try:
            outcomes = await self._runner.run(requests, durability)
        except PublishRefusedError as exc:
            # Unreachable through the runner's retry (same idempotency keys).
            metrics.REDIS_ERRORS.labels(operation="publish").inc()
            raise BrokerUnavailableError("publish") from exc
        for outcome in outcomes:
            reply = outcome.__cause__ if isinstance(outcome, PublishRefusedError) else None
            if isinstance(reply, RedisError):
                # An error reply (OOM, READONLY, ...): counted, in readiness, a 503.
                raise self._refused("publish", reply) from reply
        if any(isinstance(o, PublishResult) for o in outcomes):
            self.refusals.clear()
        return outcomes

    async def publish_raw(self, channel: str, payload: str) -> int:
        return int(await self._call("publish", self.client.publish(channel, payload)))

    async def read_history(self, history_key: str, *, after_id: str, count: int) -> HistoryPage:
        # One key, so one slot: a pipeline that Cluster sends to a single shard.
        async with self.client.pipeline(transaction=False) as pipe:
            queue_history_reads(pipe, history_key, after_id, count)
            return history_page(*await self._call("history", pipe.execute()))

    async def read_head(self, history_key: str) -> str | None:
        newest = await self._call("history", self.client.xrevrange(history_key, count=1))
        return text(newest[0][0]) if newest else None

    async def read_histories(self, requests: list[HistoryRead]) -> list[HistoryPage]:
        """Every request's reads in one pipeline (issue 15: one loop tick's)."""
        if not requests:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for r in requests:
                queue_history_reads(pipe, r.history_key, r.after_id, r.count)
            replies = await self._call("history", pipe.execute())
        return [history_page(*replies[i : i + 4]) for i in range(0, len(replies), 4)]

    async def read_heads(self, history_keys: list[str]) -> list[str | None]:
        """Every key's newest id in one pipeline (issue 15)."""
        if not history_keys:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for key in history_keys:
                pipe.xrevrange(key, count=1)
            replies = await self._call("history", pipe.execute())
        return [text(newest[0][0]) if newest else None for newest in replies]

    async def set_value(self, key: str, value: str, *, ttl_s: int) -> None:
        await self._call("set", self.client.set(key, value, ex=ttl_s))
        self.refusals.clear()

    async def get_values(self, *keys: str) -> list[str | None]:
        values = await self._call("get", self.client.mget(keys))
        return [None if v is None else text(v) for v in values]

    async def delete_value(self, key: str) -> bool:
        return bool(await self._call("delete", self.client.delete(key)))

    async def append_stream(self, key: str, fields: dict[str, str], *, maxlen: int) -> str:
        entry_id = await self._call(
            "xadd", self.client.xadd(key, fields, maxlen=maxlen, approximate=True)
        )
        return text(entry_id)


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel-managed pool that waits up to `timeout` for a free connection
    (then a 503) instead of raising at once, like the standalone pool."""


class RedisBroker(RedisCommands):
    """One Redis primary: a server of its own (standalone) or the one Sentinels
    point at (sentinel). One pub/sub connection per process."""

    def __init__(
        self,
        *,
        client: Redis,
        pubsub_client: Redis,
        control_channel: str,
        mode: RedisMode,
        where: str,
        sentinel: Sentinel | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.refusals = RecentRefusals()
        self._sentinel = sentinel
        self._pubsub_client = pubsub_client
        self._mode = mode
        self._where = where
        self._control = control_channel
        self._build_runner()
        self._channels: set[str] = set()
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._pubsub: PubSub | None = None
        self._up = False
        self._stopping = False
        self._ready = asyncio.Event()

    @classmethod
    def standalone(
        cls,
        *,
        url: str,
        control_channel: str,
        max_connections: int,
        pool_timeout_s: float,
        socket_timeout_s: float,
        username: str | None = None,
        password: str | None = None,
    ) -> RedisBroker:
        auth: dict[str, Any] = {}
        if username:
            auth["username"] = username
        if password:
            auth["password"] = password
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout_s,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            # A silent half-open socket is found by a PING every 10 s of idleness.
            health_check_interval=10,
            retry=command_retry(),
            **auth,
        )
        # The one pub/sub connection has a pool of its own, without retries.
        pubsub_pool = ConnectionPool.from_url(
            url,
            max_connections=1,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            health_check_interval=10,
            retry=no_retry(),
            **auth,
        )
        return cls(
            client=Redis(connection_pool=pool),
            pubsub_client=Redis(connection_pool=pubsub_pool),
            control_channel=control_channel,
            mode=RedisMode.STANDALONE,
            where=RedisTopology(mode=RedisMode.STANDALONE, url=url).server,
        )

    @classmethod
    def sentinel(
        cls,
        topology: RedisTopology,
        *,
        control_channel: str,
        max_connections: int,
        pool_timeout_s: float,
        socket_timeout_s: float,
    ) -> RedisBroker:
        assert topology.sentinel_master is not None
        username, password = topology.credentials()
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": socket_timeout_s,
        }
        if topology.sentinel_username:
            sentinel_kwargs["username"] = topology.sentinel_username
        if topology.sentinel_password:
            sentinel_kwargs["password"] = topology.sentinel_password
        if topology.uses_tls:
            sentinel_kwargs["ssl"] = True
        sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            list(topology.nodes),
            sentinel_kwargs=sentinel_kwargs,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            username=username,
            password=password,
            db=topology.db,
            ssl=topology.uses_tls,
        )
        client: Redis = sentinel.master_for(
            topology.sentinel_master,
            connection_pool_class=BlockingSentinelPool,
            max_connections=max_connections,
            timeout=pool_timeout_s,
            health_check_interval=10,
            retry=command_retry(),
            # A demoted primary answers writes with READONLY: redis-py then
            # disconnects and asks the Sentinels again.
            check_connection=True,
        )
        pubsub_client: Redis = sentinel.master_for(
            topology.sentinel_master,
            max_connections=1,
            health_check_interval=10,
            retry=no_retry(),
            check_connection=True,
        )
        return cls(
            client=client,
            pubsub_client=pubsub_client,
            control_channel=control_channel,
            mode=RedisMode.SENTINEL,
            where=topology.describe(),
            sentinel=sentinel,
        )

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        try:
            found_mode, role = await server_kind(self.client)
        except (*UNAVAILABLE, RedisError) as exc:
            raise BrokerUnavailableError(
                f"Redis ({self._where}) did not answer: {type(exc).__name__}"
            ) from exc
        # Through Sentinels we reach the primary itself: its kind is standalone.
        expected = RedisMode.STANDALONE if self._mode is RedisMode.SENTINEL else self._mode
        problem = mismatch(expected, self._where, found_mode, role)
        if problem is not None:
            if self._mode is RedisMode.SENTINEL:
                problem = f"NOTIFY_REDIS_MODE=sentinel: the primary of {self._where}: {problem}"
            raise BrokerTopologyError(problem)

    async def stop(self) -> None:
        self._stopping = True
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        await self._runner.aclose()
        await self.client.aclose()
        await self.client.connection_pool.disconnect()
        await self._pubsub_client.aclose()
        await self._pubsub_client.connection_pool.disconnect()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()

    @property
    def listener_up(self) -> bool:
        return self._up

    async def run_listener(self) -> None:
        """The connection loop; the hub's listener runs it (under the supervisor)."""
        attempt = 0
        connected_before = False
        while not self._stopping:
            pubsub = self._pubsub_client.pubsub()
            try:
                await self._subscribe_all(pubsub, resync=connected_before)
                self._pubsub = pubsub
                self._up = True
                self._ready.set()
                metrics.LISTENER_UP.set(1)
                if connected_before:
                    metrics.LISTENER_RECONNECTS.inc()
                    log.info("listener_reconnected", channels=len(self._channels))
                    # Every channel may have missed events, and control messages too.
                    self.inbox.put_resync(None, sweep=True)
                connected_before = True
                attempt = 0
                await self._read_forever(pubsub)
            except UNAVAILABLE as exc:
                if self._stopping:
                    break
                delay = backoff_delay(attempt)
                attempt += 1
                log.warning(
                    "listener_disconnected", error=type(exc).__name__, retry_in_s=round(delay, 2)
                )
                self._mark_down()
                await asyncio.sleep(delay)
            finally:
                self._mark_down()
                await close_pubsub(pubsub)

    def _mark_down(self) -> None:
        self._up = False
        self._pubsub = None
        metrics.LISTENER_UP.set(0)

    async def _subscribe_all(self, pubsub: PubSub, *, resync: bool) -> None:
        """Subscribe every channel. On a reconnect (`resync`) the messages that
        arrive before the confirmations are dropped, as Cluster's shard
        connections do: the `Resync` queued right after backfills every channel
        from history (and re-checks control), whereas a message taken before it
        would move its channel's last id past events the backfill must read."""
        handle = self._handle_confirmation if resync else self._handle
        channels = [self._control, *sorted(self._channels)]
        await pubsub.subscribe(*channels)
        await confirm(pubsub, channels, "subscribe", handle)
        # Subscribed meanwhile: `subscribe()` saw no connection and left them to
        # this (re)connect, whose backfill follows.
        late = sorted(self._channels - set(channels))
        if late:
            await pubsub.subscribe(*late)
            await confirm(pubsub, late, "subscribe", handle)

    async def _read_forever(self, pubsub: PubSub) -> None:
        while not self._stopping:
            message = await pubsub.get_message(timeout=LISTENER_POLL_S)
            if message is not None:
                self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = text(message.get("channel", b""))
        if kind == "message":
            data = message["data"]
            self.inbox.put_message(channel, data if isinstance(data, bytes) else str(data).encode())
        elif kind == "subscribe":
            self._handle_confirmation(message)

    def _handle_confirmation(self, message: dict[str, Any]) -> None:
        if message.get("type") == "subscribe":
            future = self._pending.pop(text(message.get("channel", b"")), None)
            if future is not None and not future.done():
                future.set_result(None)

    # --- subscriptions ---------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        pubsub = self._pubsub
        if pubsub is None:
            # Not connected: the next (re)connect subscribes it and backfills.
            return
        future = self._pending.get(channel)
        if future is None:
            future = self._pending[channel] = asyncio.get_running_loop().create_future()
            try:
                await pubsub.subscribe(channel)
            except UNAVAILABLE:
                self._pending.pop(channel, None)
                return
        await wait_confirmed(future, self._pending, channel, stopping=lambda: self._stopping)

    async def subscribe_many(self, channels: list[str]) -> None:
        """One `SUBSCRIBE` for every channel not yet pending, one confirmation
        wait for all of them (issue 15: the hub's new channels of one iteration)."""
        if len(channels) == 1:
            await self.subscribe(channels[0])
            return
        self._channels.update(channels)
        pubsub = self._pubsub
        if pubsub is None:
            return
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[None]] = {}
        new: list[str] = []
        for channel in channels:
            future = self._pending.get(channel)
            if future is None:
                future = self._pending[channel] = loop.create_future()
                new.append(channel)
            futures[channel] = future
        if new:
            try:
                await pubsub.subscribe(*new)
            except UNAVAILABLE:
                for channel in new:
                    self._pending.pop(channel, None)
                return
        try:
            await asyncio.wait_for(
                asyncio.shield(asyncio.gather(*futures.values())), SUBSCRIBE_CONFIRM_S
            )
        except (TimeoutError, asyncio.CancelledError):
            if self._stopping:
                raise
            for channel, future in futures.items():
                if self._pending.get(channel) is future and not future.done():
                    self._pending.pop(channel, None)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        pubsub = self._pubsub
        if pubsub is not None:
            try:
                await pubsub.unsubscribe(channel)
            except UNAVAILABLE:
                log.debug("unsubscribe_failed")

    reads_in_one_round_trip: ClassVar[bool] = True

    async def read_batch(self, batch: ReadBatch) -> ReadReplies:
        """Every read of one loop iteration in one pipeline on the one primary (issue
        23; Cluster spreads them over slots: `Broker.read_batch`): the `MGET`,
        the heads and the pages. A command Redis refuses fails only the read it
        belongs to; a lost connection fails them all."""
        kinds = [
            op
            for op, reads in (("get", batch.keys), ("history", batch.heads or batch.pages))
            if reads
        ]
        if not kinds:
            return ReadReplies(values=[], heads=[], pages=[])
        async with self.client.pipeline(transaction=False) as pipe:
            if batch.keys:
                pipe.mget(batch.keys)
            for key in batch.heads:
                pipe.xrevrange(key, count=1)
            for r in batch.pages:
                queue_history_reads(pipe, r.history_key, r.after_id, r.count)
            try:
                replies = await pipe.execute(raise_on_error=False)
            except (ResponseError, BusyLoadingError) as exc:
                raise self._refused(kinds[0], exc) from exc
            except UNAVAILABLE as exc:
                for op in kinds:
                    metrics.REDIS_ERRORS.labels(operation=op).inc()
                raise BrokerUnavailableError(kinds[0]) from exc
        at = 0
        values: list[str | Exception | None] = []
        if batch.keys:
            mget = replies[0]
            at = 1
            if isinstance(mget, ResponseError):
                values = [self._refused("get", mget)] * len(batch.keys)
            else:
                values = [None if v is None else text(v) for v in mget]
        heads: list[str | Exception | None] = []
        for newest in replies[at : at + len(batch.heads)]:
            if isinstance(newest, ResponseError):
                heads.append(self._refused("history", newest))
            else:
                heads.append(text(newest[0][0]) if newest else None)
        at += len(batch.heads)
        pages: list[HistoryPage | Exception] = []
        for i in range(at, len(replies), 4):
            page = replies[i : i + 4]
            refused = next((r for r in page if isinstance(r, ResponseError)), None)
            pages.append(
                self._refused("history", refused) if refused is not None else history_page(*page)
            )
        return ReadReplies(values=values, heads=heads, pages=pages)


async def close_pubsub(pubsub: PubSub) -> None:
    try:
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
    except (*UNAVAILABLE, RedisError):
        log.debug("pubsub_close_failed")


async def confirm(
    pubsub: PubSub,
    channels: Collection[str],
    kind: str,
    handle: Any,
) -> None:
    """Consume confirmations (`kind`: "subscribe" or "ssubscribe") until every
    channel is live, handing every message to `handle` on the way."""
    waiting = set(channels)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SUBSCRIBE_CONFIRM_S
    while waiting:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise RedisTimeoutError(f"{kind} not confirmed")
        message = await pubsub.get_message(timeout=remaining)
        if message is not None:
            handle(message)
            if message.get("type") == kind:
                waiting.discard(text(message.get("channel", b"")))


async def wait_confirmed(
    future: asyncio.Future[None],
    pending: dict[str, asyncio.Future[None]],
    channel: str,
    *,
    stopping: Any,
) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(future), SUBSCRIBE_CONFIRM_S)
    except (TimeoutError, asyncio.CancelledError):
        if stopping():
            raise
        pending.pop(channel, None)
