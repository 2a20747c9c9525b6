"""Redis broker: one bounded pool and exactly one pub/sub connection per process.

The listener owns the pub/sub connection. It subscribes every active channel on
connect, reads in a loop, and on any connection error closes it, waits with capped
exponential backoff and starts over (resubscribing everything, then asking the
hub to backfill what was missed). While it is away `listener_up` is False and the
readiness probe says 503.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Final

import structlog
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import metrics
from service.brokers.base import (
    Broker,
    HistoryEntry,
    HistoryPage,
    HistoryRead,
    MessageHandler,
    ReconnectHandler,
)
from service.failures import BrokerUnavailableError

log = structlog.get_logger(__name__)

# One atomic step: append to the patient's history (trimmed, with a TTL), then
# publish the event with its new id on the live channel. `p` links each entry to
# the previous one so a reader can tell a trimmed or lost history from a complete one.
# KEYS[1] history stream; ARGV: event JSON, MAXLEN, TTL seconds, live channel.
PUBLISH_SCRIPT: Final = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local prev = ''
if #last > 0 then prev = last[1][1] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1], 'p', prev)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], '{"id":"' .. id .. '",' .. string.sub(ARGV[1], 2))
return id
"""

# Errors that mean "Redis is unreachable or too slow", as opposed to a bug.
UNAVAILABLE: Final = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
# The listener reads with this timeout so it notices `stop()` and runs health checks.
LISTENER_POLL_S: Final = 1.0
# Reconnect backoff: 0.1 s doubling to 5 s, with jitter so pods don't reconnect in step.
BACKOFF_MIN_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
# A SUBSCRIBE that isn't confirmed in this long is left to the reconnect backfill.
SUBSCRIBE_CONFIRM_S: Final = 3.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _history_page(entries: Any, exists: Any, first: Any) -> HistoryPage:
    """A `HistoryPage` from the replies of XRANGE (after), EXISTS, XRANGE (first)."""
    return HistoryPage(
        entries=[
            HistoryEntry(
                id=_text(entry_id),
                prev=_text(fields.get(b"p", b"")),
                payload=_text(fields[b"e"]),
            )
            for entry_id, fields in entries
        ],
        exists=bool(exists),
        first_id=_text(first[0][0]) if first else None,
    )


class RedisBroker(Broker):
    def __init__(
        self,
        *,
        url: str,
        control_channel: str,
        max_connections: int,
        pool_timeout_s: float,
        socket_timeout_s: float,
    ) -> None:
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout_s,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            # A silent half-open socket is found by a PING every 10 s of idleness.
            health_check_interval=10,
            # from_url() brings no retries: one quick retry rides over a blip,
            # more would only delay the 503 a client can act on.
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=1),
        )
        self.client: Redis = Redis(connection_pool=self._pool)
        # The one pub/sub connection has a pool of its own, without retries: a
        # silent reconnect inside redis-py would resubscribe but hide the gap, and
        # the listener must see every loss to backfill from history.
        self._pubsub_pool = ConnectionPool.from_url(
            url,
            max_connections=1,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            health_check_interval=10,
            retry=Retry(NoBackoff(), retries=0),
        )
        self._pubsub_client: Redis = Redis(connection_pool=self._pubsub_pool)
        self._control = control_channel
        self._publish = self.client.register_script(PUBLISH_SCRIPT)
        self._channels: set[str] = set()
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._pubsub: PubSub | None = None
        self._up = False
        self._stopping = False
        self._on_message: MessageHandler | None = None
        self._on_reconnect: ReconnectHandler | None = None
        self._ready = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------

    async def start(self, *, on_message: MessageHandler, on_reconnect: ReconnectHandler) -> None:
        self._on_message = on_message
        self._on_reconnect = on_reconnect
        try:
            await self.client.ping()
        except (*UNAVAILABLE, RedisError) as exc:
            raise BrokerUnavailableError(
                f"Redis did not answer PING: {type(exc).__name__}"
            ) from exc

    async def stop(self) -> None:
        self._stopping = True
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        await self.client.aclose()
        await self._pool.disconnect()
        await self._pubsub_client.aclose()
        await self._pubsub_pool.disconnect()

    @property
    def listener_up(self) -> bool:
        return self._up

    async def wait_listening(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def run_listener(self) -> None:
        """The listener loop; the lifespan runs it under a supervisor."""
        attempt = 0
        connected_before = False
        while not self._stopping:
            pubsub = self._pubsub_client.pubsub()
            try:
                await self._subscribe_all(pubsub)
                self._pubsub = pubsub
                self._up = True
                self._ready.set()
                metrics.LISTENER_UP.set(1)
                if connected_before:
                    metrics.LISTENER_RECONNECTS.inc()
                    log.info("listener_reconnected", channels=len(self._channels))
                    if self._on_reconnect is not None:
                        await self._on_reconnect()
                connected_before = True
                attempt = 0
                await self._read_forever(pubsub)
            except UNAVAILABLE as exc:
                if self._stopping:
                    break
                delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2**attempt) * random.uniform(0.5, 1)  # noqa: S311
                attempt += 1
                log.warning(
                    "listener_disconnected", error=type(exc).__name__, retry_in_s=round(delay, 2)
                )
                self._mark_down()
                await asyncio.sleep(delay)
            finally:
                self._mark_down()
                await self._close_pubsub(pubsub)

    def _mark_down(self) -> None:
        self._up = False
        self._pubsub = None
        metrics.LISTENER_UP.set(0)

    async def _close_pubsub(self, pubsub: PubSub) -> None:
        try:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        except (*UNAVAILABLE, RedisError):
            log.debug("pubsub_close_failed")

    async def _subscribe_all(self, pubsub: PubSub) -> None:
        channels = [self._control, *sorted(self._channels)]
        await pubsub.subscribe(*channels)
        # Consume the confirmations so that every channel is live before "up".
        waiting = set(channels)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SUBSCRIBE_CONFIRM_S
        while waiting:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RedisTimeoutError("subscribe not confirmed")
            message = await pubsub.get_message(timeout=remaining)
            if message is not None:
                self._handle(message)
                waiting.discard(_text(message.get("channel", b"")))

    async def _read_forever(self, pubsub: PubSub) -> None:
        while not self._stopping:
            message = await pubsub.get_message(timeout=LISTENER_POLL_S)
            if message is not None:
                self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = _text(message.get("channel", b""))
        if kind == "message":
            data = message["data"]
            if self._on_message is not None:
                self._on_message(channel, data if isinstance(data, bytes) else str(data).encode())
        elif kind == "subscribe":
            future = self._pending.pop(channel, None)
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
        try:
            await asyncio.wait_for(asyncio.shield(future), SUBSCRIBE_CONFIRM_S)
        except (TimeoutError, asyncio.CancelledError):
            if self._stopping:
                raise
            self._pending.pop(channel, None)

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

    # --- commands ----------------------------------------------------------------

    async def _call(self, operation: str, coro: Any) -> Any:
        try:
            return await coro
        except UNAVAILABLE as exc:
            metrics.REDIS_ERRORS.labels(operation=operation).inc()
            raise BrokerUnavailableError(operation) from exc

    async def ping(self) -> None:
        await self._call("ping", self.client.ping())

    async def publish_event(
        self, *, history_key: str, channel: str, event_json: str, maxlen: int, ttl_s: int
    ) -> str:
        result = await self._call(
            "publish",
            self._publish(keys=[history_key], args=[event_json, maxlen, ttl_s, channel]),
        )
        return _text(result)

    async def publish_raw(self, channel: str, payload: str) -> int:
        return int(await self._call("publish", self.client.publish(channel, payload)))

    async def read_history(self, history_key: str, *, after_id: str, count: int) -> HistoryPage:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xrange(history_key, min=f"({after_id}", max="+", count=count)
            pipe.exists(history_key)
            pipe.xrange(history_key, min="-", max="+", count=1)
            entries, exists, first = await self._call("history", pipe.execute())
        return HistoryPage(
            entries=[
                HistoryEntry(
                    id=_text(entry_id),
                    prev=_text(fields.get(b"p", b"")),
                    payload=_text(fields[b"e"]),
                )
                for entry_id, fields in entries
            ],
            exists=bool(exists),
            first_id=_text(first[0][0]) if first else None,
        )

    async def read_histories(self, requests: list[HistoryRead]) -> list[HistoryPage]:
        """Every request's three reads in one pipeline (issue 15)."""
        if not requests:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for r in requests:
                pipe.xrange(r.history_key, min=f"({r.after_id}", max="+", count=r.count)
                pipe.exists(r.history_key)
                pipe.xrange(r.history_key, min="-", max="+", count=1)
            replies = await self._call("history", pipe.execute())
        return [_history_page(*replies[i : i + 3]) for i in range(0, len(replies), 3)]

    async def read_heads(self, history_keys: list[str]) -> list[str | None]:
        """Every key's newest id in one pipeline (issue 15)."""
        if not history_keys:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for key in history_keys:
                pipe.xrevrange(key, count=1)
            replies = await self._call("history", pipe.execute())
        return [_text(newest[0][0]) if newest else None for newest in replies]

    async def read_head(self, history_key: str) -> str | None:
        newest = await self._call("history", self.client.xrevrange(history_key, count=1))
        return _text(newest[0][0]) if newest else None

    async def set_value(self, key: str, value: str, *, ttl_s: int) -> None:
        await self._call("set", self.client.set(key, value, ex=ttl_s))

    async def get_values(self, *keys: str) -> list[str | None]:
        values = await self._call("get", self.client.mget(keys))
        return [None if v is None else _text(v) for v in values]

    async def delete_value(self, key: str) -> bool:
        return bool(await self._call("delete", self.client.delete(key)))

    async def append_stream(self, key: str, fields: dict[str, str], *, maxlen: int) -> str:
        entry_id = await self._call(
            "xadd",
            self.client.xadd(key, fields, maxlen=maxlen, approximate=True),  # type: ignore[arg-type]
        )
        return _text(entry_id)
