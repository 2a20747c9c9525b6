"""Client commands (`confirm`, `cancel`, `request_reschedule` an appointment),
written to the `{prefix}commands` Redis Stream for backends to act on.

This service holds no appointment database, so "the caller's own appointment"
means: one that the caller's own channel carried (an event delivered on this
connection) or that the caller's history stream holds. Anything else, another
patient's appointment included, is "not found", exactly like an unknown one.
Backends remain the authority: they re-check the record against their records.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from notify_publisher.keys import RedisKeys

from service.brokers.base import Broker
from service.schemas.commands import CommandRecord
from service.schemas.ws import CommandAction
from service.services.errors import ForbiddenError, NotFoundError, RateLimitedError
from service.services.principal import Principal, Role

# Appointment ids one connection remembers as the caller's (an LRU): enough for
# any patient's calendar, bounded whatever a client sends.
OWNED_CACHE_SIZE: Final = 256
# Commands a connection may send in a burst, and how fast the allowance refills:
# a person taps a button; a flood would trim unconsumed commands off the stream.
COMMAND_BURST: Final = 10
COMMAND_REFILL_PER_S: Final = 0.5


class AppointmentNotFoundError(NotFoundError):
    """Unknown appointment, or somebody else's: the two look alike."""


class CommandRateLimitedError(RateLimitedError):
    code = "rate_limited"
    public_message = "too many commands, slow down"


@dataclass(frozen=True, slots=True)
class Command:
    action: CommandAction
    appointment_id: str
    client_ref: str | None = None
    preferred_starts_at: datetime | None = None


class CommandRateLimiter:
    """A token bucket per connection."""

    def __init__(
        self, *, burst: int = COMMAND_BURST, refill_per_s: float = COMMAND_REFILL_PER_S
    ) -> None:
        self._burst = burst
        self._refill = refill_per_s
        self._tokens = float(burst)
        self._at = time.monotonic()

    def try_take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._refill)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class OwnedAppointments:
    """The appointments one connection knows to be its patient's."""

    def __init__(self, *, broker: Broker, keys: RedisKeys, patient_id: str, page_size: int) -> None:
        self._broker = broker
        self._keys = keys
        self.patient_id = patient_id
        self._page_size = page_size
        self._known: OrderedDict[str, None] = OrderedDict()

    def remember(self, appointment_id: str) -> None:
        """An event of the patient's own channel named this appointment."""
        self._known[appointment_id] = None
        self._known.move_to_end(appointment_id)
        while len(self._known) > OWNED_CACHE_SIZE:
            self._known.popitem(last=False)

    async def contains(self, appointment_id: str) -> bool:
        if appointment_id in self._known:
            self._known.move_to_end(appointment_id)
            return True
        if await self._in_history(appointment_id):
            self.remember(appointment_id)
            return True
        return False

    async def _in_history(self, appointment_id: str) -> bool:
        key = self._keys.history(self.patient_id)
        # Entries are JSON we serialized ourselves (compact): a substring test
        # skips most of them without parsing.
        needle = f'"appointment_id":"{appointment_id}"'
        after = "0-0"
        while True:
            page = await self._broker.read_history(key, after_id=after, count=self._page_size)
            for entry in page.entries:
                if needle in entry.payload and _appointment_of(entry.payload) == appointment_id:
                    return True
            if len(page.entries) < self._page_size:
                return False
            after = page.entries[-1].id


def _appointment_of(payload: str) -> str | None:
    try:
        document = json.loads(payload)
    except ValueError:
        return None
    value = document.get("appointment_id") if isinstance(document, dict) else None
    return value if isinstance(value, str) else None


async def submit_command(
    *,
    broker: Broker,
    keys: RedisKeys,
    principal: Principal,
    command: Command,
    owned: OwnedAppointments,
    maxlen: int,
) -> str:
    """Check, stamp with the principal's identity and append `command`; its entry id.

    Raises `ForbiddenError` for principals that are not patients,
    `AppointmentNotFoundError` for an appointment that is not the caller's and
    `BrokerUnavailableError` when Redis cannot be reached."""
    if principal.role is not Role.PATIENT or owned.patient_id != principal.sub:
        raise ForbiddenError()
    if not await owned.contains(command.appointment_id):
        raise AppointmentNotFoundError()
    record = CommandRecord(
        action=command.action,
        appointment_id=command.appointment_id,
        patient_id=principal.sub,
        sub=principal.sub,
        role=principal.role.value,
        jti=principal.jti,
        client_ref=command.client_ref,
        preferred_starts_at=command.preferred_starts_at,
        requested_at=datetime.now(UTC),
    )
    return await broker.append_stream(keys.commands, record.to_fields(), maxlen=maxlen)
