"""The hub's listener: the one task that pulls what the broker received.

Data flows one way. The broker's pub/sub connections (one per process; one per
shard primary in Cluster) only append to the broker's inbox
(`service/brokers/base.py:Inbox`); this task takes everything queued in one go
and routes it, in arrival order:

- a control message (revocation, ticket deletion) → `fanout/control.py:handle_control`;
- a patient channel's message → `Hub.on_message` (validated, deduplicated, fanned
  out without waiting);
- a `Resync` (the connection was away, a Cluster channel moved, the inbox
  overflowed) → the channels named are held back at once (`Hub.begin_backfill`,
  before any newer message of theirs is taken), then backfilled from history and,
  when control messages may have been missed, live streams re-checked
  (`fanout/control.py:sweep_live_streams`), one resync after the other in a task of
  this listener's, so that live messages of other channels keep flowing meanwhile.

`run` also runs the broker's connection loop (`Broker.run_listener`: reconnects
with backoff, resubscribes) when the broker has one; the supervisor restarts both
if either ends.
"""

from __future__ import annotations

import asyncio
from collections import deque

import structlog
from notify_publisher.keys import RedisKeys

from service.brokers.base import Broker, Resync
from service.fanout.control import handle_control, sweep_live_streams
from service.fanout.hub import HeldChannels, Hub
from service.services.errors import UnavailableError
from service.services.tickets import TicketStore

log = structlog.get_logger(__name__)


class HubListener:
    """Owned by the hub's side; the lifespan only starts it (under the supervisor)
    and stops it."""

    def __init__(self, *, broker: Broker, hub: Hub, keys: RedisKeys) -> None:
        self._broker = broker
        self._hub = hub
        self._keys = keys
        self._control = keys.control
        self._resyncs: deque[tuple[Resync, HeldChannels]] = deque()
        self._resyncing: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Pull until cancelled, with the broker's connection loop beside it."""
        try:
            if not self._broker.has_listener:
                await self._pull()
                return
            connection = asyncio.get_running_loop().create_task(
                self._broker.run_listener(), name="pubsub-connection"
            )
            puller = asyncio.get_running_loop().create_task(self._pull(), name="pubsub-pull")
            try:
                done, _ = await asyncio.wait(
                    (connection, puller), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in (connection, puller):
                    task.cancel()
                await asyncio.gather(connection, puller, return_exceptions=True)
            for task in done:
                # The one that ended first says why (the supervisor logs, restarts).
                task.result()
        finally:
            await self._abandon_resyncs()

    async def _abandon_resyncs(self) -> None:
        """Stopped (or restarting) with resyncs unfinished: release what they held
        back and queue one resync of everything, which the next run (after a
        supervisor restart) takes first."""
        resyncing, self._resyncing = self._resyncing, None
        unfinished = resyncing is not None and not resyncing.done()
        if resyncing is not None:
            resyncing.cancel()
            await asyncio.gather(resyncing, return_exceptions=True)
        unfinished = unfinished or bool(self._resyncs)
        while self._resyncs:
            _, held = self._resyncs.popleft()
            self._hub.release_backfill(held)
        if unfinished:
            self._broker.inbox.put_resync(None, sweep=True)

    async def _pull(self) -> None:
        control = self._control
        hub = self._hub
        while True:
            for item in await self._broker.next_messages():
                if isinstance(item, Resync):
                    self._resync(item)
                elif item[0] == control:
                    # Revocations and ticket deletions (format: `service/services/control.py`).
                    handle_control(hub, item[1])
                else:
                    hub.on_message(item[0], item[1])

    def _resync(self, resync: Resync) -> None:
        channels = resync.channels
        held = self._hub.begin_backfill(channels) if channels is None or channels else []
        self._resyncs.append((resync, held))
        if self._resyncing is None or self._resyncing.done():
            self._resyncing = asyncio.get_running_loop().create_task(
                self._run_resyncs(), name="pubsub-resync"
            )

    async def _run_resyncs(self) -> None:
        while self._resyncs:
            resync, held = self._resyncs.popleft()
            await self._hub.finish_backfill(held)
            if resync.sweep:
                await self._sweep()

    async def _sweep(self) -> None:
        """Close the streams whose revocation or ticket deletion was announced
        while the listener was away."""
        try:
            await sweep_live_streams(
                hub=self._hub,
                broker=self._broker,
                keys=self._keys,
                tickets=TicketStore(broker=self._broker, keys=self._keys),
            )
        except UnavailableError:
            log.warning("revocation_sweep_failed")
        except Exception:
            # Never let the re-check take the listener down with it.
            log.exception("revocation_sweep_crashed")
