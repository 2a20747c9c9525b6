"""Redis Cluster: commands routed by slot, sharded pub/sub per shard primary.

- Commands go through redis-py's `RedisCluster`, which routes each key to its
  slot's primary and follows `MOVED`/`ASK`. Every per-patient key carries the
  patient id as hash tag, so the publish script (XADD + EXPIRE + SPUBLISH) runs on
  one shard.
- Live events: `SSUBSCRIBE` to each patient's shard channel on the primary that
  owns its slot, over **one connection per shard primary in use** (not per
  client). A shard connection is opened when the first channel of that shard is
  wanted and closed when its last one goes.
- Control (revocations, ticket deletion): classic `SUBSCRIBE` on one node. A
  classic `PUBLISH` in Cluster is propagated to every node over the cluster bus,
  so every process hears it wherever its connection is.

redis-py's own `ClusterPubSub` is not used: it reconnects and re-subscribes by
itself after a slot migration or failover, in background tasks, and never says
so, which hides exactly the gap that must be backfilled from history; and its
`get_sharded_message` polls the per-node connections one after the other, each
with the full timeout. Here every shard connection has its own reader task and
every loss is seen:

- the connection drops (primary killed): the slot map is refreshed; channels
  whose slot has a new owner move there; each shard that (re)subscribes
  backfills its channels from history;
- the server pushes `sunsubscribe` (the slot migrated, or a `CLUSTER FAILOVER`
  demoted the primary): the same, for that channel, re-reading the slot map
  until it names the new owner (the node asked may not have heard of the move
  yet; subscribing on the demoted node again would lose what the new primary
  publishes before it knows its new replica);
- a shard stays unreachable (no replica to promote): only its patients wait;
  readiness stays 200 but reports the shard down (taking every pod out of the
  load balancer would not bring the shard back and would cut off everybody else).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import structlog
from notify_publisher.topology import RedisMode, RedisTopology, mismatch
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError, ResponseError, SlotNotCoveredError

from service import metrics
from service.brokers.base import HistoryPage, HistoryRead
from service.brokers.redis import (
    LISTENER_POLL_S,
    UNAVAILABLE,
    RedisCommands,
    backoff_delay,
    close_pubsub,
    command_retry,
    confirm,
    history_page,
    no_retry,
    server_kind,
    text,
    wait_confirmed,
)
from service.brokers.refusals import RecentRefusals
from service.failures import BrokerTopologyError, BrokerUnavailableError

log = structlog.get_logger(__name__)

# Errors of a shard connection after which the slot map is refreshed: the node
# is gone, or it answered MOVED / CLUSTERDOWN for a slot it no longer serves.
SHARD_ERRORS = (*UNAVAILABLE, ResponseError, SlotNotCoveredError)
# What redis-py raises on a connection its own reconnect closed underneath a
# command (seen under load in `bench shards`): treated as the connection's loss.
CLOSED_UNDERNEATH = (RuntimeError, AttributeError)
# After a node dropped a channel (`sunsubscribe`): how long the slot map is read
# again while it still names that node (gossip not there yet), with backoff from
# MOVE_FIRST_RETRY_S up to MOVE_MAX_RETRY_S. Past it the map is believed: the
# node has the slot again (a failover back), the channel is subscribed there.
MOVE_WAIT_S = 10.0
MOVE_FIRST_RETRY_S = 0.05
MOVE_MAX_RETRY_S = 0.5


@dataclass(eq=False)
class _Shard:
    """One shard primary's sharded pub/sub connection and the channels on it."""

    name: str
    host: str
    port: int
    channels: set[str] = field(default_factory=set)
    pubsub: PubSub | None = None
    task: asyncio.Task[None] | None = None
    # Channels to backfill once their SSUBSCRIBE is confirmed: new on this
    # shard (first connect, moved here) or subscribed again after a loss.
    backfill: set[str] = field(default_factory=set)
    pending: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    # Channels this node dropped (`sunsubscribe`) whose new owner the slot map
    # does not name yet, and the task that reads the map until it does.
    moving: set[str] = field(default_factory=set)
    mover: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self.pubsub is not None


class ClusterBroker(RedisCommands):
    # Patient channels are shard channels (SPUBLISH/SSUBSCRIBE).
    sharded = True

    def __init__(
        self,
        topology: RedisTopology,
        *,
        control_channel: str,
        max_connections: int,
        pool_timeout_s: float,
        socket_timeout_s: float,
    ) -> None:
        super().__init__()
        username, password = topology.credentials()
        self._where = topology.describe()
        self._seeds = topology.seed_addresses()
        self._node_options: dict[str, Any] = {
            "username": username,
            "password": password,
            "ssl": topology.uses_tls,
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": socket_timeout_s,
            "health_check_interval": 10,
        }
        self.client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self._seeds],
            # Serve the shards that answer while one is down (the server side
            # needs `cluster-require-full-coverage no` for the same).
            require_full_coverage=False,
            # Per node; past it a request gets a 503 at once (redis-py's cluster
            # pools do not wait, unlike the standalone pool's NOTIFY_REDIS_POOL_TIMEOUT_S).
            max_connections=max_connections,
            retry=command_retry(),
            **self._node_options,
        )
        self.refusals = RecentRefusals()
        self._control = control_channel
        self._build_runner(self._node_options)
        self._channels: set[str] = set()
        self._shards: dict[str, _Shard] = {}
        self._owner: dict[str, _Shard] = {}
        self._control_pubsub: PubSub | None = None
        self._control_node: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._listening = False
        self._refresh_lock = asyncio.Lock()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._ready = asyncio.Event()
        self._failure: BaseException | None = None
        self._last_health: tuple[float, tuple[int, int]] | None = None
        self._probes: dict[str, Redis] = {}
        # Half the per-node pool for one batch of plain commands (see `_gather`).
        self._concurrency = asyncio.Semaphore(max(1, max_connections // 2))

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        await self._check_seed()
        try:
            await self.client.initialize()
        except RedisClusterException as exc:
            raise BrokerTopologyError(
                f"NOTIFY_REDIS_MODE=cluster but {self._where} gave no usable slot map: {exc}"
            ) from exc
        except (*UNAVAILABLE, RedisError) as exc:
            raise BrokerUnavailableError(
                f"Redis Cluster ({self._where}) did not answer: {type(exc).__name__}"
            ) from exc

    async def _check_seed(self) -> None:
        """The first seed that answers must be a Cluster node of Redis 7+ (sharded
        pub/sub); anything else is refused with one line."""
        last: BaseException | None = None
        for host, port in self._seeds:
            node = Redis(host=host, port=port, retry=no_retry(), **self._node_options)
            try:
                found_mode, role = await server_kind(node)
                info = await node.info("server")
            except (*UNAVAILABLE, RedisError) as exc:
                last = exc
                continue
            finally:
                await node.aclose()
            problem = mismatch(RedisMode.CLUSTER, f"{host}:{port}", found_mode, role)
            if problem is not None:
                raise BrokerTopologyError(problem)
            version = str(info.get("redis_version", "0"))
            if int(version.split(".")[0]) < 7:
                raise BrokerTopologyError(
                    f"{host}:{port} runs Redis {version}: sharded pub/sub needs Redis 7.0 or newer"
                )
            return
        raise BrokerUnavailableError(
            f"no seed node of {self._where} answered: {type(last).__name__}"
        )

    async def stop(self) -> None:
        self._stopping = True
        self._stopped.set()
        for shard in self._shards.values():
            for future in shard.pending.values():
                if not future.done():
                    future.cancel()
        for task in list(self._tasks):
            if not task.cancelling():
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for probe in self._probes.values():
            await probe.aclose()
        self._probes.clear()
        await self._runner.aclose()
        await self.client.aclose()

    @property
    def listener_up(self) -> bool:
        return self._control_pubsub is not None

    async def run_listener(self) -> None:
        """Runs the control connection and every shard connection; each has its
        own task that reconnects by itself. A task that fails unexpectedly ends
        this one (the supervisor restarts it, and every shard backfills)."""
        self._failure = None
        restarted = self._listening
        self._listening = True
        for shard in list(self._shards.values()):
            if restarted:
                shard.backfill |= shard.channels
            self._ensure_task(shard)
            if shard.moving:
                # The restart cancelled its mover: the map is read again.
                shard.mover = self._spawn(self._follow_moves(shard), f"{shard.name}-moves")
        self._spawn(self._run_control(sweep_first=restarted), "control")
        try:
            await self._stopped.wait()
        finally:
            for task in list(self._tasks):
                # Once: a second cancel would interrupt a task's own clean-up
                # (its connections would be left open).
                if not task.cancelling():
                    task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._failure is not None and not self._stopping:
            raise self._failure

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            coro, name=f"cluster-{name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        if exc is not None:
            # Wake run_listener, which re-raises for the supervisor to log and restart.
            self._failure = exc
            self._stopped.set()

    def _ensure_task(self, shard: _Shard) -> None:
        if self._listening and (shard.task is None or shard.task.done()) and shard.channels:
            shard.task = self._spawn(self._run_shard(shard), shard.name)

    # --- control channel ---------------------------------------------------------

    def _control_candidates(self) -> list[tuple[str, int]]:
        """Seeds first (so each process' control connection is where its
        configuration points), then every primary known."""
        found = list(self._seeds)
        for node in self.client.get_primaries():
            if (node.host, node.port) not in found:
                found.append((node.host, int(node.port)))
        return found

    async def _run_control(self, *, sweep_first: bool) -> None:
        attempt = 0
        connected_before = sweep_first
        while not self._stopping:
            candidates = self._control_candidates()
            host, port = candidates[attempt % len(candidates)]
            client = Redis(host=host, port=port, retry=no_retry(), **self._node_options)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self._control)
                await confirm(pubsub, [self._control], "subscribe", self._handle_control)
                self._control_pubsub = pubsub
                self._control_node = f"{host}:{port}"
                self._ready.set()
                metrics.LISTENER_UP.set(1)
                if connected_before:
                    metrics.LISTENER_RECONNECTS.inc()
                    log.info("listener_reconnected", channels=len(self._channels))
                    # Control messages may have been missed (the shard
                    # connections backfill their own channels).
                    self.inbox.put_resync((), sweep=True)
                connected_before = True
                attempt = 0
                while not self._stopping:
                    message = await pubsub.get_message(timeout=LISTENER_POLL_S)
                    if message is not None:
                        self._handle_control(message)
            except UNAVAILABLE as exc:
                if self._stopping:
                    break
                self._control_pubsub = None
                metrics.LISTENER_UP.set(0)
                delay = backoff_delay(attempt // max(1, len(candidates)))
                attempt += 1
                log.warning(
                    "listener_disconnected", error=type(exc).__name__, retry_in_s=round(delay, 2)
                )
                await asyncio.sleep(delay)
            finally:
                self._control_pubsub = None
                metrics.LISTENER_UP.set(0)
                await _close(pubsub, client)

    def _handle_control(self, message: dict[str, Any]) -> None:
        if message.get("type") == "message":
            data = message["data"]
            channel = text(message.get("channel", b""))
            self.inbox.put_message(channel, data if isinstance(data, bytes) else str(data).encode())

    # --- shard connections ---------------------------------------------------------

    def _owner_name(self, channel: str) -> tuple[str, str, int] | None:
        """(name, host, port) of the primary that owns `channel`'s slot, or None
        while the slot is not covered (mid-failover)."""
        try:
            node = self.client.nodes_manager.get_node_from_slot(self.client.keyslot(channel))
        except SlotNotCoveredError:
            return None
        return node.name, node.host, int(node.port)

    def _place(self, channel: str) -> _Shard | None:
        """Put `channel` on its owner's shard connection (created if needed)."""
        owner = self._owner_name(channel)
        current = self._owner.get(channel)
        if owner is None:
            return current
        name, host, port = owner
        if current is not None and current.name == name:
            return current
        if current is not None:
            # No SUNSUBSCRIBE on the old connection: a node that lost the slot
            # has already dropped the channel (and pushed `sunsubscribe`), a
            # dead one has no connection left. Its stray messages are ignored.
            current.channels.discard(channel)
            current.backfill.discard(channel)
        shard = self._shards.get(name)
        if shard is None:
            shard = self._shards[name] = _Shard(name=name, host=host, port=port)
        shard.channels.add(channel)
        # A channel new on a connection may have missed events: backfill it
        # once that connection confirms it.
        shard.backfill.add(channel)
        self._owner[channel] = shard
        self._ensure_task(shard)
        return shard

    async def _run_shard(self, shard: _Shard) -> None:
        attempt = 0
        # Checked again after every `finally`: a channel placed here while the
        # connection was closing keeps the loop (and the connection) going.
        while not self._stopping and shard.channels:
            client = Redis(host=shard.host, port=shard.port, retry=no_retry(), **self._node_options)
            pubsub = client.pubsub()
            try:
                wanted = sorted(shard.channels)
                for channels in self._by_slot(wanted):
                    await pubsub.ssubscribe(*channels)
                # Messages before every confirmation are dropped: each of these
                # channels is backfilled from history right after.
                await confirm(pubsub, wanted, "ssubscribe", lambda m: None)
                shard.pubsub = pubsub
                if attempt:
                    metrics.LISTENER_RECONNECTS.inc()
                attempt = 0
                # Channels placed on this shard while the SSUBSCRIBEs above were
                # under way found no connection yet (`subscribe` returned at
                # once): subscribe them now (their confirmation, read below,
                # backfills them); channels dropped meanwhile are let go.
                await self._catch_up(shard, pubsub, set(wanted))
                self._backfill_confirmed(shard, wanted)
                await self._read_shard(shard, pubsub)
            except SHARD_ERRORS as exc:
                if self._stopping:
                    break
                shard.pubsub = None
                shard.backfill |= shard.channels
                delay = backoff_delay(attempt)
                attempt += 1
                log.warning(
                    "shard_listener_disconnected",
                    shard=shard.name,
                    error=type(exc).__name__,
                    channels=len(shard.channels),
                    retry_in_s=round(delay, 2),
                )
                await self._refresh_slots()
                if shard.channels:
                    await asyncio.sleep(delay)
            finally:
                shard.pubsub = None
                for future in shard.pending.values():
                    if not future.done():
                        future.cancel()
                shard.pending.clear()
                await _close(pubsub, client)
        if self._shards.get(shard.name) is shard and not shard.channels:
            del self._shards[shard.name]

    def _by_slot(self, channels: list[str]) -> list[list[str]]:
        """`channels` grouped by slot: one SSUBSCRIBE must stay within one slot."""
        groups: dict[int, list[str]] = {}
        for channel in channels:
            groups.setdefault(self.client.keyslot(channel), []).append(channel)
        return list(groups.values())

    async def _catch_up(self, shard: _Shard, pubsub: PubSub, sent: set[str]) -> None:
        for channels in self._by_slot(sorted(shard.channels - sent)):
            await pubsub.ssubscribe(*channels)
        gone = sorted(sent - shard.channels)
        if gone:
            await pubsub.sunsubscribe(*gone)

    async def _read_shard(self, shard: _Shard, pubsub: PubSub) -> None:
        while not self._stopping and shard.channels:
            message = await pubsub.get_message(timeout=LISTENER_POLL_S)
            if message is None:
                continue
            kind = message.get("type")
            channel = text(message.get("channel", b""))
            if kind == "smessage":
                if channel in shard.channels:
                    data = message["data"]
                    self.inbox.put_message(
                        channel, data if isinstance(data, bytes) else str(data).encode()
                    )
            elif kind == "ssubscribe":
                future = shard.pending.pop(channel, None)
                if future is not None and not future.done():
                    future.set_result(None)
                self._backfill_confirmed(shard, [channel])
            elif kind == "sunsubscribe" and channel in shard.channels:
                # Not asked for: the server dropped us because the slot moved
                # (migration, or a failover demoted this primary).
                log.info("shard_channel_moved", shard=shard.name)
                shard.backfill.add(channel)
                shard.moving.add(channel)
                if shard.mover is None or shard.mover.done():
                    shard.mover = self._spawn(self._follow_moves(shard), f"{shard.name}-moves")

    async def _follow_moves(self, shard: _Shard) -> None:
        """Read the slot map until it places every channel `shard` dropped on
        another node (`_place` moves it there; that connection backfills it).
        The node asked may not have heard of the move yet: a map that still
        names `shard` is read again, never believed at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MOVE_WAIT_S
        delay = MOVE_FIRST_RETRY_S
        while shard.moving and not self._stopping:
            await self._refresh_slots()
            shard.moving = {c for c in shard.moving if self._owner.get(c) is shard}
            if not shard.moving:
                return
            if loop.time() >= deadline:
                await self._subscribe_again(shard)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, MOVE_MAX_RETRY_S)

    async def _subscribe_again(self, shard: _Shard) -> None:
        """The map kept naming this node for MOVE_WAIT_S: it has the slots back."""
        channels, shard.moving = sorted(shard.moving), set()
        log.warning("shard_channel_not_moved", shard=shard.name, channels=len(channels))
        pubsub = shard.pubsub
        if pubsub is None:
            # Reconnecting: the new connection subscribes and backfills them.
            return
        try:
            for group in self._by_slot(channels):
                # Confirmed on the reader task, which backfills them.
                await pubsub.ssubscribe(*group)
        except (*SHARD_ERRORS, *CLOSED_UNDERNEATH):
            log.debug("ssubscribe_again_failed")

    def _backfill_confirmed(self, shard: _Shard, channels: list[str]) -> None:
        todo = [c for c in channels if c in shard.backfill]
        if not todo:
            return
        shard.backfill.difference_update(todo)
        # Queued behind every message read before it: the hub marks them as
        # backfilling before it takes anything newer of theirs.
        self.inbox.put_resync(todo, sweep=False)

    async def _refresh_slots(self) -> None:
        """Re-read the slot map and move every channel whose slot has a new owner."""
        if self._refresh_lock.locked():
            async with self._refresh_lock:
                return
        async with self._refresh_lock:
            try:
                await self.client.nodes_manager.initialize()
            except (*UNAVAILABLE, RedisError) as exc:
                log.warning("cluster_slots_refresh_failed", error=type(exc).__name__)
                return
            for channel in list(self._channels):
                self._place(channel)

    # --- subscriptions -----------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        shard = self._place(channel)
        if shard is None:
            # Slot not covered right now: the next slot-map refresh places it.
            return
        pubsub = shard.pubsub
        if pubsub is None:
            # Connecting: its first SSUBSCRIBE covers the channel, then backfills.
            return
        # Subscribed on a live connection before any replay: no backfill needed.
        shard.backfill.discard(channel)
        future = shard.pending.get(channel)
        if future is None:
            future = shard.pending[channel] = asyncio.get_running_loop().create_future()
            try:
                await pubsub.ssubscribe(channel)
            except (*SHARD_ERRORS, *CLOSED_UNDERNEATH):
                # The shard task reconnects, subscribes it and backfills it.
                shard.pending.pop(channel, None)
                shard.backfill.add(channel)
                return
        await wait_confirmed(future, shard.pending, channel, stopping=lambda: self._stopping)

    async def subscribe_many(self, channels: list[str]) -> None:
        """Channels of several shards: each SSUBSCRIBE goes to its own shard's
        connection, all at once, each confirmed there."""
        await asyncio.gather(*(self.subscribe(channel) for channel in channels))

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        shard = self._owner.pop(channel, None)
        if shard is None:
            return
        shard.channels.discard(channel)
        shard.backfill.discard(channel)
        pubsub = shard.pubsub
        if pubsub is not None:
            try:
                await pubsub.sunsubscribe(channel)
            except (*SHARD_ERRORS, *CLOSED_UNDERNEATH):
                # Lost with its connection anyway; never fail the stream's end.
                log.debug("sunsubscribe_failed")

    # --- commands that differ in Cluster -------------------------------------------

    async def publish_raw(self, channel: str, payload: str) -> int:
        if channel == self._control:
            # Classic PUBLISH reaches every node's subscribers over the cluster bus.
            return int(await self._call("publish", self.client.publish(channel, payload)))
        return int(await self._call("publish", self.client.spublish(channel, payload)))

    # No cluster pipelines (mget_nonatomic, pipeline()): in redis-py 8.1 a
    # ClusterPipeline that meets a ConnectionError (MaxConnectionsError included:
    # a burst over NOTIFY_REDIS_MAX_CONNECTIONS) closes the WHOLE client before
    # retrying, which cuts the connections other requests are using (they fail
    # with AttributeError, 500s). Plain commands, concurrently, instead.

    async def _call(self, operation: str, coro: Any) -> Any:
        try:
            return await super()._call(operation, coro)
        except CLOSED_UNDERNEATH as exc:
            # redis-py 8.1's cluster client, reloading its slot map after one
            # command's timeout, closes connections that other commands are using
            # at that moment; those fail with "unable to perform operation on
            # <TCPTransport closed=True>" or "'NoneType' object has no attribute
            # 'writelines'" instead of a ConnectionError (seen in `bench shards`:
            # 500s). Infrastructure, not a bug of the request: a 503.
            metrics.REDIS_ERRORS.labels(operation=operation).inc()
            log.warning("redis_cluster_client_error", operation=operation, error=type(exc).__name__)
            raise BrokerUnavailableError(operation) from exc

    async def _gather(self, operation: str, *coros: Any) -> list[Any]:
        """Run `coros` at most `_concurrency` at a time: redis-py's cluster pools
        do not wait for a free connection, a storm's thousand GETs at once would
        be refused by the pool (MaxConnectionsError) instead of queued."""

        async def bounded(coro: Any) -> Any:
            try:
                async with self._concurrency:
                    return await coro
            finally:
                # Cancelled while waiting for its turn: never started, close it.
                coro.close()

        results = await asyncio.gather(*(bounded(c) for c in coros), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                # Raised through `_call`, so it maps as any command's error.
                await self._call(operation, _raise(result))
        return list(results)

    async def get_values(self, *keys: str) -> list[str | None]:
        # Keys of several slots: one GET each, concurrently.
        values = await self._gather("get", *(self.client.get(key) for key in keys))
        return [None if v is None else text(v) for v in values]

    async def read_history(self, history_key: str, *, after_id: str, count: int) -> HistoryPage:
        # One after the other: one pool connection at a time, as the pipeline used.
        c = self.client
        entries = await self._call(
            "history", c.xrange(history_key, min=f"({after_id}", count=count)
        )
        exists = await self._call("history", c.exists(history_key))
        first = await self._call("history", c.xrange(history_key, min="-", max="+", count=1))
        last = await self._call("history", c.xrevrange(history_key, max="+", min="-", count=1))
        return history_page(entries, exists, first, last)

    async def read_histories(self, requests: list[HistoryRead]) -> list[HistoryPage]:
        return await self._gather(
            "history",
            *(
                self.read_history(r.history_key, after_id=r.after_id, count=r.count)
                for r in requests
            ),
        )

    async def read_heads(self, history_keys: list[str]) -> list[str | None]:
        return await self._gather("history", *(self.read_head(key) for key in history_keys))

    async def shards_down(self, timeout_s: float) -> tuple[int, int]:
        """Pings every shard primary (at most once a second: readiness asks
        right after `ping`, which asks this)."""
        loop = asyncio.get_running_loop()
        if self._last_health is not None and loop.time() - self._last_health[0] < 1.0:
            return self._last_health[1]
        primaries = self.client.get_primaries()

        async def answers(node: ClusterNode) -> bool:
            # A client of its own per primary, without retries: the cluster
            # client's error handling (retry, slot-map reload) would turn one dead
            # node into a readiness timeout for the whole process.
            client = self._probes.get(node.name)
            if client is None:
                client = self._probes[node.name] = Redis(
                    host=node.host,
                    port=int(node.port),
                    retry=no_retry(),
                    single_connection_client=True,
                    **{
                        **self._node_options,
                        "socket_timeout": timeout_s,
                        "socket_connect_timeout": timeout_s,
                    },
                )
            try:
                await asyncio.wait_for(client.ping(), timeout_s)
            except (*UNAVAILABLE, RedisError):
                return False
            return True

        results = await asyncio.gather(*(answers(node) for node in primaries))
        current = {node.name for node in primaries}
        for name in [n for n in self._probes if n not in current]:
            await self._probes.pop(name).aclose()
        down = sum(not ok for ok in results)
        metrics.REDIS_SHARDS_DOWN.set(down)
        self._last_health = (loop.time(), (down, len(primaries)))
        return down, len(primaries)

    async def ping(self) -> None:
        down, total = await self.shards_down(timeout_s=self._node_options["socket_timeout"])
        if total == 0 or down == total:
            raise BrokerUnavailableError("ping")

    # --- introspection (notify doctor, tests) --------------------------------------

    @property
    def shard_connections(self) -> dict[str, int]:
        """Shard primary → channels subscribed on its connection (up ones only)."""
        return {s.name: len(s.channels) for s in self._shards.values() if s.up}

    @property
    def control_node(self) -> str | None:
        return self._control_node if self.listener_up else None


async def _raise(exc: BaseException) -> None:
    raise exc


async def _close(pubsub: PubSub, client: Redis) -> None:
    """Close a pub/sub connection and its client; the client's pool is closed
    even when closing the pub/sub is interrupted."""
    try:
        await close_pubsub(pubsub)
    finally:
        await client.aclose()
