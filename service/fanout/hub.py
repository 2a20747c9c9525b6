"""Local fan-out: one pub/sub message becomes one `Delivery`, shared by every
subscription of that channel in this process.

- The hub's listener (`service/fanout/listener.py`) pulls every message the
  broker received and hands it to `Hub.on_message`; the hub validates it once,
  makes one `Delivery` per channel, and offers it to each subscription's queue
  without waiting (`service/fanout/queue.py:DeliveryQueue.put_nowait`).
- Per channel the hub remembers the last history id it delivered, drops duplicates
  (a backfill and the live channel may overlap) and, after the broker reconnects,
  backfills every active channel from history so connected clients miss nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Coroutine
from typing import Any, Protocol

import structlog
from notify_publisher.events import MAX_EVENT_BYTES, EventStored
from notify_publisher.keys import RedisKeys
from pydantic import ValidationError

from service import metrics
from service.brokers.base import StreamKey, parse_stream_id
from service.fanout.closing import CloseReason
from service.fanout.queue import Delivery, DeliveryQueue

log = structlog.get_logger(__name__)
SUBSCRIBE_BATCH = metrics.REDIS_BATCH_SIZE.labels(operation="subscribe")


class ChannelBroker(Protocol):
    """What the hub asks of the broker: the process' subscriptions (`Broker`)."""

    async def subscribe(self, channel: str) -> None: ...

    async def subscribe_many(self, channels: list[str]) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...


class BackfillSource(Protocol):
    """Where a channel's missed events are read from (`HistoryReader`)."""

    async def read_all_after(
        self, patient_id: str, after_id: str
    ) -> tuple[list[EventStored], bool, str | None]: ...


class _Channel:
    __slots__ = (
        "backfilling",
        "last_key",
        "patient_id",
        "pending",
        "queues",
        "since_ms",
        "subscribed",
    )

    def __init__(self, patient_id: str) -> None:
        self.patient_id = patient_id
        # A list, not a set: most channels have one queue (a patient's one stream),
        # 72 bytes against a set's 216; a detach scans it (`leave`).
        self.queues: list[DeliveryQueue] = []
        self.last_key: StreamKey | None = None
        # Fallback start of a backfill when nothing with an id was delivered yet.
        self.since_ms = int(time.time() * 1000)
        # Backfills queued or running for it (several may overlap: a listener
        # reconnect and a Cluster shard's); live messages wait while > 0.
        self.backfilling = 0
        # The live messages held back meanwhile (None until there is one).
        self.pending: list[bytes] | None = None
        # Resolved once the broker confirmed the subscription (None: confirmed, or
        # nobody waits any more); every attach of the channel waits on it.
        self.subscribed: asyncio.Future[None] | None = None

    def leave(self, queue: DeliveryQueue) -> None:
        """Remove `queue` if it is one of the channel's."""
        with contextlib.suppress(ValueError):
            self.queues.remove(queue)


# Channels whose live messages wait for a backfill (`Hub.begin_backfill`).
HeldChannels = list[_Channel]


class Hub:
    """Channel → queues, reference-counted against the broker's subscriptions.

    The first attach of a channel does not subscribe it alone: every channel that
    became new during one loop iteration is subscribed with one broker call (one
    `SUBSCRIBE` carrying them all, one confirmation wait), and each attach returns
    once its own channel is confirmed. The lock is held only while the broker call
    runs, so a detach's unsubscribe never overtakes the subscribe it undoes."""

    def __init__(
        self,
        *,
        keys: RedisKeys,
        broker: ChannelBroker,
        history: BackfillSource | None = None,
    ) -> None:
        self._keys = keys
        self._broker = broker
        self._channels: dict[str, _Channel] = {}
        self._lock = asyncio.Lock()
        self._all: set[DeliveryQueue] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._to_subscribe: list[tuple[str, _Channel]] = []
        self._subscribing: set[asyncio.Task[None]] = set()
        self._subscribing_task: asyncio.Task[None] | None = None
        # Reads what a channel missed while the listener was away (None: no history).
        self.history = history

    # --- membership --------------------------------------------------------------

    async def attach(self, patient_id: str, queue: DeliveryQueue) -> None:
        """Add `queue`; the first one of a patient subscribes the channel and
        returns only once the broker confirmed it (so a replay can follow safely);
        later ones joining before the confirmation wait for it too."""
        name = self._keys.patient_channel(patient_id)
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel(patient_id)
            channel.subscribed = asyncio.get_running_loop().create_future()
            if not self._to_subscribe and self._subscribing_task is None:
                asyncio.get_running_loop().call_soon(self._start_subscribing)
            self._to_subscribe.append((name, channel))
        channel.queues.append(queue)
        self._all.add(queue)
        self._idle.clear()
        waiting = channel.subscribed
        if waiting is None:
            return
        try:
            # Shielded: one caller going away must not cancel the others' wait.
            await asyncio.shield(waiting)
        except BaseException:
            channel.leave(queue)
            self._forget(queue)
            if not channel.queues and channel.subscribed is None:
                # Settled already, so the batch will not look at it again.
                self._spawn(self._drop_if_empty(name, channel))
            raise

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # Owned by the hub: short broker calls whose outcome the waiting attaches
        # receive through their futures; tracked so that none is collected early.
        task = asyncio.get_running_loop().create_task(coro)
        self._subscribing.add(task)
        task.add_done_callback(self._subscribing.discard)
        return task

    def _start_subscribing(self) -> None:
        if self._subscribing_task is None and self._to_subscribe:
            self._subscribing_task = self._spawn(self._subscribe_pending())

    async def _subscribe_pending(self) -> None:
        """One subscribing task at a time, and each batch is formed when the
        previous one is confirmed: everything that became new meanwhile goes in
        one call (a batch per loop iteration, each waiting for the lock, would
        serialise thousands of round trips in a storm)."""
        try:
            while self._to_subscribe:
                batch, self._to_subscribe = self._to_subscribe, []
                await self._subscribe_batch(batch)
        finally:
            self._subscribing_task = None

    async def _subscribe_batch(self, batch: list[tuple[str, _Channel]]) -> None:
        async with self._lock:
            # A channel whose queues all left before it was subscribed was
            # dropped (and "unsubscribed") by `detach` already: skip it.
            live = [(n, c) for n, c in batch if self._channels.get(n) is c]
            SUBSCRIBE_BATCH.observe(len(live))
            try:
                if len(live) == 1:
                    await self._broker.subscribe(live[0][0])
                elif live:
                    await self._broker.subscribe_many([name for name, _ in live])
            except BaseException as exc:
                for name, channel in batch:
                    # Not subscribed: every attach waiting on it fails and leaves.
                    if self._channels.get(name) is channel:
                        del self._channels[name]
                    self._settle(channel, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            for name, channel in live:
                self._settle(channel, None)
                if not channel.queues:
                    # Its only attaches were cancelled while it was being subscribed.
                    del self._channels[name]
                    await self._broker.unsubscribe(name)
        for _, channel in batch:
            self._settle(channel, None)

    async def _drop_if_empty(self, name: str, channel: _Channel) -> None:
        async with self._lock:
            if not channel.queues and self._channels.get(name) is channel:
                del self._channels[name]
                await self._broker.unsubscribe(name)

    @staticmethod
    def _settle(channel: _Channel, exc: BaseException | None) -> None:
        future, channel.subscribed = channel.subscribed, None
        if future is None or future.done():
            return
        if exc is None:
            future.set_result(None)
        elif isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)
            # Retrieved here: a channel whose attaches all left has no reader.
            future.exception()

    async def detach(self, patient_id: str, queue: DeliveryQueue) -> None:
        """Remove `queue`; the last one of a patient unsubscribes the channel."""
        name = self._keys.patient_channel(patient_id)
        self._forget(queue)
        async with self._lock:
            channel = self._channels.get(name)
            if channel is None:
                return
            channel.leave(queue)
            if not channel.queues:
                del self._channels[name]
                await self._broker.unsubscribe(name)

    def _forget(self, queue: DeliveryQueue) -> None:
        self._all.discard(queue)
        if not self._all:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no queue is left; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def track(self, queue: DeliveryQueue) -> None:
        """Count a connection's own queue, which holds no channel (a WebSocket's,
        before, between and beside its subscriptions), so that drains, revocations
        and `wait_streams_closed` see the connection."""
        self._all.add(queue)
        self._idle.clear()

    def untrack(self, queue: DeliveryQueue) -> None:
        self._forget(queue)

    @property
    def queues(self) -> frozenset[DeliveryQueue]:
        return frozenset(self._all)

    @property
    def channel_names(self) -> list[str]:
        return list(self._channels)

    def close_where(self, predicate: Callable[[DeliveryQueue], bool], reason: CloseReason) -> int:
        """Close every local queue matching `predicate`; how many were closed."""
        closed = 0
        for queue in list(self._all):
            if queue.close_reason is None and predicate(queue):
                queue.close(reason)
                closed += 1
        return closed

    # --- what the listener hands over ---------------------------------------------

    def on_message(self, channel_name: str, raw: bytes) -> None:
        """Validate one raw pub/sub message and fan it out. Never raises for bad input."""
        channel = self._channels.get(channel_name)
        if channel is None:
            metrics.EVENTS_RECEIVED.labels(outcome="no_subscriber").inc()
            return
        if channel.backfilling:
            if channel.pending is None:
                channel.pending = []
            channel.pending.append(raw)
            return
        self._dispatch(channel, raw)

    def _dispatch(self, channel: _Channel, raw: bytes) -> None:
        event = self._parse(channel, raw)
        if event is not None:
            self._fan_out(channel, event)

    def _parse(self, channel: _Channel, raw: bytes) -> EventStored | None:
        if len(raw) > MAX_EVENT_BYTES:
            return self._drop("too_large")
        try:
            event = EventStored.model_validate_json(raw)
        except ValidationError as exc:
            # Field locations and error types only: never the payload or its values.
            fields = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
            return self._drop("invalid", fields=fields[:10])
        if event.patient_id != channel.patient_id:
            # Published on another patient's channel: never deliver it there.
            return self._drop("wrong_channel")
        if event.rule_violation() is not None:
            return self._drop("rule")
        return event

    @staticmethod
    def _drop(reason: str, **fields: object) -> None:
        metrics.EVENTS_RECEIVED.labels(outcome="invalid").inc()
        log.warning("event_dropped", reason=reason, **fields)
        return

    def _fan_out(self, channel: _Channel, event: EventStored) -> None:
        if event.id is not None:
            key = parse_stream_id(event.id)
            if channel.last_key is not None and key <= channel.last_key:
                metrics.EVENTS_RECEIVED.labels(outcome="duplicate").inc()
                return
            channel.last_key = key
        delivery = Delivery.from_event(event)
        metrics.EVENTS_RECEIVED.labels(outcome="delivered").inc()
        if delivery.published_at is not None:
            metrics.DELIVERY_LATENCY.observe(max(0.0, time.time() - delivery.published_at))
        for queue in tuple(channel.queues):
            queue.put_nowait(delivery)

    def broadcast_gap(self, channel: _Channel, oldest_id: str | None) -> None:
        gap = Delivery.gap(oldest_id)
        for queue in tuple(channel.queues):
            queue.put_nowait(gap)

    # --- recovery after the broker reconnected ------------------------------------

    async def backfill(self, channel_names: Collection[str] | None = None) -> None:
        """Replay from history what each active channel (or each of `channel_names`:
        one Cluster shard's) missed while the listener was away; live messages
        arriving meanwhile wait and are deduplicated."""
        await self.finish_backfill(self.begin_backfill(channel_names))

    def begin_backfill(self, channel_names: Collection[str] | None = None) -> HeldChannels:
        """Hold back the live messages of each active channel (or of each of
        `channel_names`) from now on, until `finish_backfill` of what this returns.
        Synchronous, so that the listener calls it before it takes a newer message."""
        if self.history is None:
            return []
        if channel_names is None:
            channels = list(self._channels.values())
        else:
            channels = [c for n in channel_names if (c := self._channels.get(n)) is not None]
        for channel in channels:
            channel.backfilling += 1
        return channels

    async def finish_backfill(self, channels: HeldChannels) -> None:
        """Read each of `channels`' missed events from history and fan them out,
        then the live messages held back meanwhile (deduplicated by id)."""
        reader = self.history
        try:
            for channel in channels:
                if reader is None:
                    break
                after = (
                    f"{channel.last_key[0]}-{channel.last_key[1]}"
                    if channel.last_key is not None
                    else None
                )
                try:
                    events, gap, oldest = await reader.read_all_after(
                        channel.patient_id, after or f"{channel.since_ms}-0"
                    )
                except Exception:
                    log.exception("backfill_failed")
                    self.broadcast_gap(channel, None)
                    continue
                if gap and after is not None:
                    self.broadcast_gap(channel, oldest)
                for event in events:
                    self._fan_out(channel, event)
        finally:
            self.release_backfill(channels)

    def release_backfill(self, channels: HeldChannels) -> None:
        """Let `channels`' held-back live messages go (a backfill ended, or will not
        run); a channel another backfill still holds keeps waiting for that one."""
        for channel in channels:
            channel.backfilling -= 1
            if channel.backfilling:
                continue
            pending, channel.pending = channel.pending, None
            for raw in pending or ():
                if channel.queues:
                    self._dispatch(channel, raw)
