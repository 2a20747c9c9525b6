"""The broker interface: pub/sub with one listener per process, history streams,
and the few key/value operations tickets and revocations need.

Implementations: `RedisBroker` (one primary: standalone or found through
Sentinel), `ClusterBroker` (Redis Cluster, sharded pub/sub), both for production
with any number of processes, built by `service/brokers/factory.py`; and
`MemoryBroker` (one process: `make run` and unit tests of the hub).
"""

from __future__ import annotations

import abc
import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, TypeVar

from notify_publisher.batch import Durability, Outcome
from notify_publisher.request import PublishRequest

from service import metrics

StreamKey = tuple[int, int]
T = TypeVar("T")


def parse_stream_id(value: str) -> StreamKey:
    """`"1700000000000-3"` → `(1700000000000, 3)`, comparable in stream order."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class Resync:
    """The listener was away (or channels moved to another connection): backfill
    `channels` from history (None: every active one), and, with `sweep`, re-check
    live streams because control messages may have been missed."""

    channels: tuple[str, ...] | None
    sweep: bool


# What the broker's inbox holds, in arrival order: a pub/sub message (channel,
# raw payload) or a `Resync`.
Inbound = tuple[str, bytes] | Resync

# Messages the inbox holds before it drops new ones and asks for a full resync.
INBOX_LIMIT: Final = 65_536


class Inbox:
    """The one-way hand-over from the broker's connections to its one reader (the
    hub's listener, `service/fanout/listener.py`). The connections only append,
    never wait and call nothing; the reader takes everything queued in one go.

    Bounded: past `limit` a message is dropped (counted as `overflow`) and the
    next batch ends with `Resync(None, sweep=True)`, so the reader backfills every
    channel from history and re-checks live streams instead of losing anything."""

    __slots__ = ("_items", "_limit", "_overflowed", "_waiter")

    def __init__(self, limit: int = INBOX_LIMIT) -> None:
        self._items: deque[Inbound] = deque()
        self._limit = limit
        self._overflowed = False
        self._waiter: asyncio.Future[None] | None = None

    def put_message(self, channel: str, raw: bytes) -> None:
        if len(self._items) >= self._limit:
            self._overflowed = True
            metrics.EVENTS_RECEIVED.labels(outcome="overflow").inc()
            self._wake()
            return
        self._items.append((channel, raw))
        self._wake()

    def put_resync(self, channels: Collection[str] | None, *, sweep: bool) -> None:
        # Never dropped: a resync is what repairs a drop.
        self._items.append(Resync(None if channels is None else tuple(channels), sweep))
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list[Inbound]:
        """Everything queued, oldest first; waits while there is nothing."""
        while not self._items and not self._overflowed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items = list(self._items)
        self._items.clear()
        if self._overflowed:
            self._overflowed = False
            items.append(Resync(None, sweep=True))
        return items

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    id: str
    # Id of the entry published just before this one on the same history stream
    # ("" for the first): lets a reader prove nothing was trimmed in between.
    prev: str
    payload: str


@dataclass(frozen=True, slots=True)
class HistoryRead:
    """One `read_history` call, for `read_histories`."""

    history_key: str
    after_id: str
    count: int


@dataclass(frozen=True, slots=True)
class HistoryPage:
    entries: list[HistoryEntry]
    exists: bool
    first_id: str | None
    # The newest entry's id: a resume id newer than it was lost (a failover that
    # dropped writes not yet replicated), which is a gap, not "nothing new".
    last_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReadBatch:
    """The reads of one loop iteration, for `read_batch`: values by key (`MGET`:
    tickets, revocations), history heads and history pages."""

    keys: list[str]
    heads: list[str]
    pages: list[HistoryRead]


@dataclass(frozen=True, slots=True)
class ReadReplies:
    """One answer per read of a `ReadBatch`, in its order: the value, or the
    exception that this read alone failed with."""

    values: list[str | Exception | None]
    heads: list[str | Exception | None]
    pages: list[HistoryPage | Exception]


async def _each(call: Callable[[], Awaitable[Sequence[T]]], count: int) -> list[T | Exception]:
    """`call`'s answers, or its exception once per read (the reads of one kind)."""
    if not count:
        return []
    try:
        return list(await call())
    except Exception as exc:
        return [exc] * count


class Broker(abc.ABC):
    """One per process, created and closed by the lifespan.

    Data flows one way: the broker's pub/sub connections append what they receive
    to `inbox` (messages, and a `Resync` after every loss), and the hub's listener
    pulls it (`next_messages`). The broker calls nothing of its reader."""

    # Whether `read_batch` sends every kind of read in one round trip (one
    # pipeline on one server); where it cannot, `TickReads` calls it per kind.
    reads_in_one_round_trip: ClassVar[bool] = False

    # Whether patient channels are shard channels (Cluster: SPUBLISH/SSUBSCRIBE).
    sharded = False

    def __init__(self) -> None:
        self.inbox = Inbox()

    async def next_messages(self) -> list[Inbound]:
        """What arrived since the last call, in order; waits while nothing did."""
        return await self.inbox.take()

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect (fail fast when unreachable); `run_listener` then receives."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop the listener and release every connection."""

    async def run_listener(self) -> None:
        """The connection loop of a broker whose messages come from a server; the
        hub's listener (`service/fanout/listener.py`) runs it beside its pulling. An
        in-process broker has none."""
        raise NotImplementedError

    @property
    def has_listener(self) -> bool:
        """Whether `run_listener` must run for messages to arrive."""
        return type(self).run_listener is not Broker.run_listener

    async def wait_listening(self, timeout_s: float) -> bool:
        """Wait until the listener is subscribed; False after `timeout_s`."""
        return True

    @property
    @abc.abstractmethod
    def listener_up(self) -> bool:
        """True while the listener is connected and subscribed."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise `BrokerUnavailableError` unless the broker answers."""

    async def shards_down(self, timeout_s: float) -> tuple[int, int]:
        """(shards not answering, shards): only Cluster has more than one; the
        others answer `ping` as a whole."""
        return 0, 1

    def recent_refusals(self) -> list[str]:
        """Causes of the error replies (refusals) seen lately (`redis_oom` …): a
        server that refuses writes but still serves streams."""
        return []

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Subscribe the process to `channel`; returns once the server confirmed it."""

    async def subscribe_many(self, channels: list[str]) -> None:
        """Subscribe every channel of `channels`; returns once each is confirmed.
        (Issue 15: the hub subscribes all channels new in one loop iteration at
        once; a broker may send them as one command with one confirmation wait.)"""
        for channel in channels:
            await self.subscribe(channel)

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Drop the process' subscription to `channel`."""

    @abc.abstractmethod
    async def publish_events(
        self, requests: Sequence[PublishRequest], durability: Durability | None
    ) -> list[Outcome]:
        """Run `publish.lua` (`notify_publisher`) for each request, in order: each
        appends its event to the history stream and publishes it live with the new
        entry id, atomically, or replays the id its idempotency key stored. With
        `durability`, then waits for that many replicas (`NotDurableError`)."""

    @abc.abstractmethod
    async def publish_raw(self, channel: str, payload: str) -> int:
        """A plain PUBLISH (control messages, tests; in Cluster a patient channel
        gets SPUBLISH); returns the receiver count."""

    @abc.abstractmethod
    async def read_history(self, history_key: str, *, after_id: str, count: int) -> HistoryPage:
        """Up to `count` entries strictly after `after_id`, oldest first."""

    @abc.abstractmethod
    async def read_head(self, history_key: str) -> str | None:
        """The id of the newest entry of the history stream, or None when empty."""

    async def read_histories(self, requests: list[HistoryRead]) -> list[HistoryPage]:
        """`read_history` for each request, in order (one round trip where the
        broker can: the history reads of one loop iteration, issue 15)."""
        return [
            await self.read_history(r.history_key, after_id=r.after_id, count=r.count)
            for r in requests
        ]

    async def read_heads(self, history_keys: list[str]) -> list[str | None]:
        """`read_head` for each key, in order (one round trip where it can)."""
        return [await self.read_head(key) for key in history_keys]

    async def read_batch(self, batch: ReadBatch) -> ReadReplies:
        """Every read of `batch`, one round trip where the broker can (issue 23:
        all of one loop iteration's reads). Here one call per kind, the three at
        once (a ticket or revocation check waits for the slowest kind, not for
        their sum): a failure fails that kind's reads only (in Cluster, a kind's
        reads spread over shards fail together when one shard fails)."""
        values, heads, pages = await asyncio.gather(
            _each(lambda: self.get_values(*batch.keys), len(batch.keys)),
            _each(lambda: self.read_heads(batch.heads), len(batch.heads)),
            _each(lambda: self.read_histories(batch.pages), len(batch.pages)),
        )
        return ReadReplies(values=values, heads=heads, pages=pages)

    @abc.abstractmethod
    async def set_value(self, key: str, value: str, *, ttl_s: int) -> None:
        """SET with a TTL (tickets, revocations)."""

    @abc.abstractmethod
    async def get_values(self, *keys: str) -> list[str | None]:
        """MGET."""

    @abc.abstractmethod
    async def delete_value(self, key: str) -> bool:
        """DEL; True when something was deleted."""

    @abc.abstractmethod
    async def append_stream(self, key: str, fields: dict[str, str], *, maxlen: int) -> str:
        """XADD with an approximate MAXLEN; returns the entry id."""


def splice_id(event_json: str, event_id: str) -> str:
    """Insert `"id"` as the first member of a JSON object we serialized ourselves."""
    return f'{{"id":"{event_id}",{event_json[1:]}'
