"""A connection: one client's connection, whatever its transport. It is the unit
of admission against the limits (per process, per subject), of credentials (the
token's expiry; revocations and ticket deletions close its queues), of the close
reason that wins when several apply, and of the audit line. Its subscriptions
(`service/fanout/subscription.py`) are the unit of hub membership.

- `Connection`: what both transports share (admit/release, expiry, `closing`).
- `SseConnection`: an SSE stream, a connection with exactly one subscription
  (`open`, `end`); its subscription's queue is the one its credentials close.
- `WsConnection` (`service/fanout/ws_connection.py`): a WebSocket, holding up to
  `ws_max_subscriptions`.
"""

from __future__ import annotations

import json
import random
import time
from typing import Final

from service import metrics
from service.fanout.clock import Clock
from service.fanout.closing import ENDINGS, PRECEDENCE, CloseReason, Ending
from service.fanout.hub import Hub
from service.fanout.queue import Delivery, DeliveryQueue
from service.fanout.subscription import Replay, Subscription, reason_for
from service.services.channels import StreamScope
from service.services.history import HistoryReader
from service.services.limits import ConnectionLimiter, Limit
from service.services.principal import Principal

SSE: Final = "sse"


def jittered_retry_ms(base_ms: int) -> int:
    """A per-connection `retry:` so that clients don't come back in lockstep."""
    return int(base_ms * random.uniform(0.5, 1.5))  # noqa: S311


class Connection:
    """What both transports share: admission and release, the token's expiry (the
    process' clock calls `warn_expiring` and `expire`: `service/fanout/clock.py`),
    the close reason that wins when several apply. `queue` is the queue the
    connection's credentials close (SSE: its subscription's; WebSocket: its own)."""

    # Slots, not an instance dict: every idle stream keeps one (issue 23).
    __slots__ = (
        "__weakref__",
        "_admitted",
        "_clock",
        "_limiter",
        "_started",
        "principal",
        "queue",
        "route",
        "transport",
    )

    queue: DeliveryQueue

    def __init__(
        self,
        *,
        limiter: ConnectionLimiter,
        principal: Principal,
        transport: str,
        route: str,
        clock: Clock,
    ) -> None:
        self._limiter = limiter
        self.principal = principal
        self.transport = transport
        self.route = route
        # Warns and closes once for the whole connection when the token expires.
        self._clock = clock
        self._admitted = False
        self._started = time.monotonic()

    def admit(self) -> Limit | None:
        """Count the connection once against the limits; the limit hit when refused."""
        refused = self._limiter.try_acquire(self.principal.sub)
        if refused is not None:
            metrics.CAPACITY_REFUSALS.labels(transport=self.transport, limit=refused.value).inc()
            return refused
        metrics.OPEN_STREAMS.labels(transport=self.transport).inc()
        self._admitted = True
        return None

    def _release(self) -> float | None:
        """Undo `admit` (once); the connection's duration in seconds, None when it
        was not admitted."""
        if not self._admitted:
            return None
        self._admitted = False
        self._limiter.release(self.principal.sub)
        metrics.OPEN_STREAMS.labels(transport=self.transport).dec()
        duration = time.monotonic() - self._started
        metrics.STREAM_DURATION.labels(transport=self.transport).observe(duration)
        return duration

    def schedule_expiry(self) -> None:
        """Have the clock warn with `token_expiring` shortly before the token's
        expiry and expire the connection at it (replacing an earlier expiry)."""
        self._clock.expiry(self, self.principal.expires_at)

    # --- called by the clock (`service/fanout/clock.py:Expiring`) -------------------

    def warn_expiring(self, expires_at: int) -> None:
        raise NotImplementedError

    def expire(self) -> None:
        self.queue.close(CloseReason.TOKEN_EXPIRED)

    def close_reasons(self) -> set[CloseReason | None]:
        """The close reason of each of the connection's queues (None: open)."""
        return {self.queue.close_reason}

    def closing(self) -> Ending | None:
        """Why the connection must end now, if it must: the credentials' fate wins
        (`PRECEDENCE`), then any other reason set."""
        reasons = self.close_reasons()
        for reason in PRECEDENCE:
            if reason in reasons:
                return ENDINGS[reason]
        other = next((r for r in reasons if r is not None), None)
        return ENDINGS[other] if other is not None else None


class SseConnection(Connection):
    """An SSE stream: a connection with exactly one subscription, attached (and
    `stream_opened`) by `open`, which gives the replay to send; detached, released
    and `stream_closed` by `end`, whatever ended it (`reason_for`: the queue's
    reason or the exception). `end` runs once, from the transport
    (`service/transports/sse_stream.py`)."""

    __slots__ = ("subscription",)

    def __init__(
        self,
        *,
        hub: Hub,
        history: HistoryReader,
        limiter: ConnectionLimiter,
        principal: Principal,
        scope: StreamScope,
        queue_max: int,
        route: str,
        clock: Clock,
    ) -> None:
        super().__init__(
            limiter=limiter, principal=principal, transport=SSE, route=route, clock=clock
        )
        self.subscription = Subscription(
            hub=hub,
            history=history,
            principal=principal,
            scope=scope,
            transport=SSE,
            queue_max=queue_max,
            route=route,
        )
        self.queue = self.subscription.queue

    async def open(self, *, resume_from: str | None) -> Replay:
        """Attach the subscription (`stream_opened`) and start its replay; ended
        (detached, released, `stream_closed`) when that fails."""
        try:
            return await self.subscription.start(
                resume_from=resume_from, attached=self.schedule_expiry
            )
        except BaseException as exc:
            await self.end(reason=reason_for(exc, self.queue))
            raise

    def warn_expiring(self, expires_at: int) -> None:
        notice = Delivery(kind="token_expiring", payload=json.dumps({"expires_at": expires_at}))
        self.queue.put_nowait(notice)

    async def end(self, *, reason: CloseReason) -> None:
        self._clock.discard(self)
        try:
            await self.subscription.detach()
        finally:
            # Even when the detach failed or was cancelled: the limit and the
            # `stream_closed` line must not depend on the broker.
            self._release()
            self.subscription.log_closed(reason)
