"""The process' state: what every request needs, created once by the lifespan
(`service/lifespan.py`) and read back by tiny dependencies (`service/deps/state.py`).
It imports no router and no lifespan, so route modules don't import the app."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import TypedDict

import structlog
from notify_publisher.keys import RedisKeys

from service.brokers.base import Broker
from service.config import Settings
from service.fanout.clock import Clock
from service.fanout.closing import CloseReason
from service.fanout.hub import Hub
from service.services.batching import TickReads
from service.services.history import HistoryReader
from service.services.limits import ConnectionLimiter
from service.services.supervisor import Supervisor
from service.services.tokens import TokenVerifier

log = structlog.get_logger("service.lifespan")

# After the last reconnect hint of a drain: time for the streams to close.
DRAIN_MARGIN_S = 1.0
# After the sends still stuck at the drain's end were aborted: time for their
# streams to end.
ABORTED_MARGIN_S = 1.0


@dataclass
class AppState:
    """Everything a request needs from the process, created once by the lifespan."""

    settings: Settings
    keys: RedisKeys
    broker: Broker
    hub: Hub
    history: HistoryReader
    verifier: TokenVerifier
    limiter: ConnectionLimiter
    supervisor: Supervisor
    # Heartbeats, token expiry and stalled sends of every stream (one task).
    clock: Clock
    draining: bool = False
    _drained: asyncio.Event = field(default_factory=asyncio.Event)
    # Ticket and revocation reads of one loop iteration share one MGET (issue 15),
    # and one round trip with the iteration's history reads (issue 23).
    reads: TickReads = field(init=False)

    def __post_init__(self) -> None:
        self.reads = self.history.reads

    def begin_drain(self) -> None:
        """Readiness goes 503 now; each stream gets its reconnect hint at a random
        moment of the jitter window so clients don't all return at once."""
        if self.draining:
            return
        self.draining = True
        window = self.settings.shutdown_grace_s * self.settings.shutdown_jitter_fraction
        loop = asyncio.get_running_loop()
        queues = self.hub.queues
        log.info("drain_started", streams=len(queues), window_s=round(window, 1))
        for queue in queues:
            delay = random.uniform(0, window)  # noqa: S311
            loop.call_later(delay, queue.close, CloseReason.SHUTDOWN)

    async def wait_streams_closed(self, timeout_s: float) -> bool:
        return await self.hub.wait_idle(timeout_s)

    @property
    def drain_wait_s(self) -> float:
        """From the drain's start until every stream has had its hint and time to
        close, within the grace window."""
        grace = self.settings.shutdown_grace_s
        return min(grace, grace * self.settings.shutdown_jitter_fraction + DRAIN_MARGIN_S)

    async def finish_drain(self) -> bool:
        """What the exit signal waits for before the server's own shutdown: the
        drained streams closed (`drain_wait_s`). A stream still open then is one
        whose writer is stuck sending to a peer that does not read: it will never
        take its hint, and the server would wait for it until its graceful timeout
        and then cancel it (logged as an error). Its send is aborted now, as the
        send timeout would later. True once every stream closed."""
        if await self.wait_streams_closed(self.drain_wait_s):
            return True
        aborted = self.clock.abort_sends()
        log.info("drain_aborted_stalled_sends", sends=aborted)
        return await self.wait_streams_closed(ABORTED_MARGIN_S)


class LifespanState(TypedDict):
    notify: AppState
