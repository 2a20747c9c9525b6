"""The broker interface: pub/sub with one listener per process, history streams,
and the few key/value operations tickets and revocations need.

Implementations: `RedisBroker` (one primary: standalone or found through
Sentinel), `ClusterBroker` (Redis Cluster, sharded pub/sub), both for production
with any number of processes, built by `service/brokers/factory.py`; and
`MemoryBroker` (one process: `make run` and unit tests of the hub).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

from notify_publisher.batch import Durability, Outcome
from notify_publisher.request import PublishRequest

StreamKey = tuple[int, int]


def parse_stream_id(value: str) -> StreamKey:
    """`"1700000000000-3"` → `(1700000000000, 3)`, comparable in stream order."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


# Called by the listener for every pub/sub message: (channel, raw payload).
MessageHandler = Callable[[str, bytes], None]
# Called after the listener re-established subscriptions following a loss:
# (channels to backfill from history, None for every active one; whether control
# messages may have been missed, so live streams must be re-checked).
ReconnectHandler = Callable[[Collection[str] | None, bool], Awaitable[None]]


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


class Broker(abc.ABC):
    """One per process, created and closed by the lifespan."""

    # Whether patient channels are shard channels (Cluster: SPUBLISH/SSUBSCRIBE).
    sharded = False

    @abc.abstractmethod
    async def start(self, *, on_message: MessageHandler, on_reconnect: ReconnectHandler) -> None:
        """Connect (fail fast when unreachable) and start the listener."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop the listener and release every connection."""

    async def run_listener(self) -> None:
        """The listener loop of a broker whose messages come from a server; the
        lifespan runs it under the supervisor. An in-process broker has none."""
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
