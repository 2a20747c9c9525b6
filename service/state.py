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
from service.services.batching import KeyReader
from service.services.history import HistoryReader
from service.services.limits import ConnectionLimiter
from service.services.supervisor import Supervisor
from service.services.tokens import TokenVerifier

log = structlog.get_logger("service.lifespan")


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
    # Ticket and revocation reads of one loop iteration share one MGET (issue 15).
    key_reader: KeyReader = field(init=False)

    def __post_init__(self) -> None:
        self.key_reader = KeyReader(self.broker.get_values)

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


class LifespanState(TypedDict):
    notify: AppState
