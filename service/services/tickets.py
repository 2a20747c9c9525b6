"""Stream tickets: how a browser opens a stream without putting its token in a URL.

    POST /v1/stream-tickets (bearer) ─▶ random ticket, stored in Redis under its
    SHA-256, bound to the token's sub, role, scopes, jti, iat and exp
        ─▶ `?ticket=` on the SSE routes and `WS /v1/ws` (any process can redeem it)
        ─▶ redeemable again and again until the token expires, so EventSource's
           own reconnects (same URL, `Last-Event-ID`) keep working
        ─▶ dies with the token (Redis TTL), when deleted (streams opened with it
           end) or when its token or subject is revoked

Redis only ever sees the ticket's hash: a key listing or a `MONITOR` does not hand
out redeemable tickets. The hash (`ticket_id`) is also what streams remember and
what the control channel announces; the ticket itself is never logged.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Final

import structlog
from notify_publisher.keys import RedisKeys
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.brokers.base import Broker
from service.services.batching import TickReads
from service.services.control import announce_ticket_deleted
from service.services.errors import NotFoundError, UnauthorizedError
from service.services.principal import Principal, Role, scope_set

log = structlog.get_logger(__name__)

# 32 random bytes (256 bits), URL-safe base64 without padding: 43 characters.
TICKET_BYTES: Final = 32
_TICKET_SHAPE: Final = re.compile(r"^[A-Za-z0-9_-]{43}$")
# Roles that have streams to open; tickets are useless (and refused) for others.
STREAM_ROLES: Final = frozenset({Role.PATIENT, Role.STAFF})


class TicketNotFoundError(NotFoundError):
    """Unknown, expired or somebody else's ticket (the three look alike)."""


def ticket_id(ticket: str) -> str:
    """The ticket's public handle: its SHA-256 (Redis key, control channel, logs)."""
    return hashlib.sha256(ticket.encode()).hexdigest()


def is_ticket_shaped(ticket: str) -> bool:
    return _TICKET_SHAPE.fullmatch(ticket) is not None


class TicketRecord(BaseModel):
    """What Redis holds for one ticket: the token's identity, never the token."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sub: str
    role: Role
    scopes: list[str] = Field(default_factory=list)
    jti: str | None = None
    iat: float | None = None
    exp: float

    @classmethod
    def of(cls, principal: Principal) -> TicketRecord:
        return cls(
            sub=principal.sub,
            role=principal.role,
            scopes=sorted(principal.scopes),
            jti=principal.jti,
            iat=principal.issued_at,
            exp=principal.expires_at,
        )

    def principal(self, ticket_id: str) -> Principal:
        return Principal(
            sub=self.sub,
            role=self.role,
            scopes=scope_set(self.scopes),
            jti=self.jti,
            expires_at=self.exp,
            issued_at=self.iat,
            ticket_id=ticket_id,
        )


@dataclass(frozen=True, slots=True)
class IssuedTicket:
    ticket: str
    ticket_id: str
    expires_at: float


class TicketStore:
    """Issue, redeem and delete tickets; state lives only in Redis."""

    def __init__(self, *, broker: Broker, keys: RedisKeys, reader: TickReads | None = None) -> None:
        self._broker = broker
        self._keys = keys
        # Redeeming reads through the process' coalescing reader when given (one
        # MGET per loop iteration); still Redis every time, nothing cached.
        self._get_values = reader.get_values if reader is not None else broker.get_values

    async def issue(self, principal: Principal, *, now: float | None = None) -> IssuedTicket:
        """A new ticket for the (already verified, not revoked) `principal`."""
        if principal.ticket_id is not None:
            # A ticket only opens streams; it never buys another ticket.
            raise UnauthorizedError("ticket")
        now = time.time() if now is None else now
        ttl_s = math.ceil(principal.expires_at - now)
        if ttl_s <= 0:
            raise UnauthorizedError("expired")
        ticket = secrets.token_urlsafe(TICKET_BYTES)
        handle = ticket_id(ticket)
        record = TicketRecord.of(principal)
        # The key dies with the token: Redis forgets the ticket when it expires.
        await self._broker.set_value(
            self._keys.ticket(handle), record.model_dump_json(), ttl_s=ttl_s
        )
        log.info("ticket_issued", subject=principal.sub, ttl_s=ttl_s)
        return IssuedTicket(ticket=ticket, ticket_id=handle, expires_at=principal.expires_at)

    async def _load(self, ticket: str) -> TicketRecord | None:
        if not is_ticket_shaped(ticket):
            return None
        (raw,) = await self._get_values(self._keys.ticket(ticket_id(ticket)))
        if raw is None:
            return None
        try:
            return TicketRecord.model_validate(json.loads(raw))
        except (ValueError, ValidationError):
            log.warning("ticket_record_invalid")
            return None

    async def redeem(self, ticket: str, *, now: float | None = None) -> Principal:
        """The principal a ticket stands for; `UnauthorizedError` if it is not valid.

        Not single-use, on purpose: a browser's EventSource reconnects to the same
        URL by itself, and a 401 there would end its stream for good. Revocation is
        checked by the caller, as for a bearer token."""
        record = await self._load(ticket)
        if record is None:
            raise UnauthorizedError("ticket")
        now = time.time() if now is None else now
        if record.exp <= now:
            raise UnauthorizedError("expired")
        return record.principal(ticket_id(ticket))

    async def delete(self, ticket: str, *, owner: Principal) -> None:
        """Delete `owner`'s ticket and end, in every process, the streams it opened."""
        record = await self._load(ticket)
        if record is None or record.sub != owner.sub:
            raise TicketNotFoundError()
        handle = ticket_id(ticket)
        await self._broker.delete_value(self._keys.ticket(handle))
        await announce_ticket_deleted(self._broker, self._keys, handle)
        log.info("ticket_deleted", subject=owner.sub)

    async def exist(self, ticket_ids: list[str]) -> list[bool]:
        """Which of these tickets (by id) are still stored."""
        if not ticket_ids:
            return []
        values = await self._broker.get_values(*(self._keys.ticket(t) for t in ticket_ids))
        return [v is not None for v in values]
