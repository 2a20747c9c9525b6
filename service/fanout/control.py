"""What the control channel does to live connections: the listener hands every
control message to `handle_control` (format and announcements:
`service/services/control.py`), and after it reconnects re-checks every live
connection with `sweep_live_streams` (an announcement sent while it was away is
lost). Both close the matching queues with `revoked` or `ticket_deleted`."""

from __future__ import annotations

import time

import structlog
from notify_publisher.keys import RedisKeys

from service.brokers.base import Broker
from service.fanout.closing import CloseReason
from service.fanout.hub import Hub
from service.fanout.queue import DeliveryQueue
from service.services.control import RevokedMessage, parse_control
from service.services.revocations import SWEEP_BATCH, revokes
from service.services.tickets import TicketStore

log = structlog.get_logger(__name__)


def handle_control(hub: Hub, raw: bytes) -> int:
    """Apply one control message to this process' streams; how many were closed.

    Called by the listener for every message on the control channel: never raises."""
    message = parse_control(raw)
    if message is None:
        return 0
    reason = (
        CloseReason.REVOKED if isinstance(message, RevokedMessage) else CloseReason.TICKET_DELETED
    )

    def affected(queue: DeliveryQueue) -> bool:
        return queue.principal is not None and message.matches(queue.principal)

    closed = hub.close_where(affected, reason)
    log.info("control_applied", type=message.type, closed=closed)
    return closed


async def sweep_live_streams(
    *, hub: Hub, broker: Broker, keys: RedisKeys, tickets: TicketStore
) -> int:
    """Close the local streams whose token, subject or ticket was revoked or deleted
    while this process could not hear the control channel; how many were closed."""
    queues = [s for s in hub.queues if s.principal is not None]
    now = time.time()
    closed = 0
    for start in range(0, len(queues), SWEEP_BATCH):
        batch = queues[start : start + SWEEP_BATCH]
        principals = [s.principal for s in batch if s.principal is not None]
        wanted: list[str] = []
        for p in principals:
            wanted.append(keys.revoked_sub(p.sub))
            wanted.append(keys.revoked_jti(p.jti) if p.jti is not None else "")
            wanted.append(keys.ticket(p.ticket_id) if p.ticket_id is not None else "")
        lookup = [k for k in wanted if k]
        values = dict(zip(lookup, await broker.get_values(*lookup), strict=True))
        for queue, p in zip(batch, principals, strict=True):
            sub_value = values.get(keys.revoked_sub(p.sub))
            jti_value = values.get(keys.revoked_jti(p.jti)) if p.jti is not None else None
            if revokes(p, sub_value, jti_value):
                queue.close(CloseReason.REVOKED)
                closed += 1
            elif (
                p.ticket_id is not None
                and values.get(keys.ticket(p.ticket_id)) is None
                # A ticket that merely expired with its token: the expiry timer
                # closes that stream with the right reason.
                and p.expires_at > now
            ):
                queue.close(CloseReason.TICKET_DELETED)
                closed += 1
    if closed:
        log.info("streams_swept", closed=closed)
    return closed
