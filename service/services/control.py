"""The control channel (`{prefix}control`): announcements every process acts on.

Each process' single pub/sub listener is subscribed to it; a message closes the
matching live streams of that process. Messages are JSON objects:

    {"type": "revoked", "jti": "<jti>"}
        every stream opened with that token (or a ticket of it) ends
    {"type": "revoked", "sub": "<sub>", "at": <unix seconds>}
        every stream of that subject whose token was issued at or before `at`
        (or has no `iat`) ends; without `at`, every stream of the subject
    {"type": "ticket_deleted", "ticket_id": "<sha256 hex of the ticket>"}
        every stream opened with that ticket ends

A message only closes live streams (`service/fanout/control.py:handle_control`);
refusing new requests is the job of the Redis keys written before it (see
`services/revocations.py`). Unknown types are ignored so
that newer publishers can add some; malformed messages are logged without content.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import structlog
from notify_publisher.keys import RedisKeys
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from service.brokers.base import Broker
from service.services.principal import Principal

log = structlog.get_logger(__name__)

# A control message is a few hundred bytes; anything bigger is not one of ours.
MAX_CONTROL_BYTES = 4096


class RevokedMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["revoked"]
    jti: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    sub: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    # Unix seconds of the subject revocation; tokens issued later stay valid.
    at: float | None = None

    def matches(self, principal: Principal) -> bool:
        if self.jti is not None and principal.jti == self.jti:
            return True
        if self.sub is not None and principal.sub == self.sub:
            return revokes_issued_at(self.at, principal.issued_at)
        return False


class TicketDeletedMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["ticket_deleted"]
    ticket_id: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

    def matches(self, principal: Principal) -> bool:
        return principal.ticket_id == self.ticket_id


ControlMessage = Annotated[RevokedMessage | TicketDeletedMessage, Field(discriminator="type")]
_CONTROL: TypeAdapter[RevokedMessage | TicketDeletedMessage] = TypeAdapter(ControlMessage)
_KNOWN_TYPES = frozenset({"revoked", "ticket_deleted"})


def revokes_issued_at(revoked_at: float | None, issued_at: float | None) -> bool:
    """Whether a subject revocation at `revoked_at` covers a token issued at
    `issued_at`: tokens without `iat` are always covered (fail closed)."""
    if revoked_at is None or issued_at is None:
        return True
    return issued_at <= revoked_at


def parse_control(raw: bytes) -> RevokedMessage | TicketDeletedMessage | None:
    """A known control message, or None (unknown type or malformed)."""
    if len(raw) > MAX_CONTROL_BYTES:
        log.warning("control_message_invalid", reason="too_large")
        return None
    try:
        document = json.loads(raw)
    except ValueError:
        log.warning("control_message_invalid", reason="json")
        return None
    if not isinstance(document, dict):
        log.warning("control_message_invalid", reason="shape")
        return None
    if document.get("type") not in _KNOWN_TYPES:
        log.debug("control_message_ignored")
        return None
    try:
        return _CONTROL.validate_python(document)
    except ValidationError as exc:
        # Field names only, never values.
        fields = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
        log.warning("control_message_invalid", reason="shape", fields=fields[:5])
        return None


async def announce_revocation(
    broker: Broker,
    keys: RedisKeys,
    *,
    jti: str | None = None,
    sub: str | None = None,
    at: float | None = None,
) -> None:
    message = RevokedMessage(type="revoked", jti=jti, sub=sub, at=at)
    await broker.publish_raw(keys.control, message.model_dump_json(exclude_none=True))


async def announce_ticket_deleted(broker: Broker, keys: RedisKeys, ticket_id: str) -> None:
    message = TicketDeletedMessage(type="ticket_deleted", ticket_id=ticket_id)
    await broker.publish_raw(keys.control, message.model_dump_json())
