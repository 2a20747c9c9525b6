"""The appointment event contract (DESIGN.md, "Events").

Shape rules live here (a wrong shape is a 422 at the API). The business rule
`starts_at < ends_at` is a separate check (`rule_violation`) so the API can answer
400 for it: wrong meaning is not wrong shape.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
)

# The one size limit of an event, everywhere it travels: the compact JSON as
# stored in history and published (`POST /v1/events` refuses a larger body or
# event with 413, raw pub/sub messages and history entries above it are dropped
# and counted). Matches `client_max_body_size 64k` in deploy/nginx/nginx.conf.
# Appointment events are a few hundred bytes; 64 KiB leaves room for notes.
MAX_EVENT_BYTES: Final = 64 * 1024

# Opaque ids: letters, digits, `_` and `-`. No room for names, e-mails or dates of
# birth with spaces, `@` or dots, and nothing that could break a Redis key.
OPAQUE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
OpaqueId = Annotated[str, Strict(), StringConstraints(pattern=OPAQUE_ID_PATTERN)]

# RFC 3339 `date-time` (section 5.6) with its offset, and nothing else. Pydantic's
# lax datetime parsing would read `0`, `"0"` or `"1700000000"` as Unix time: a
# publisher's bug would become a plausible appointment on 1970-01-01.
_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


def _rfc3339_only(value: object) -> object:
    if isinstance(value, datetime):
        # Built in Python by this service (e.g. `published_at`), not parsed input.
        return value
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        return value
    raise ValueError(
        "must be an RFC 3339 date-time string with an offset, e.g. 2026-12-01T14:00:00Z"
    )


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339_only)]
# A Redis Stream entry id: `<milliseconds>-<sequence>`.
STREAM_ID_PATTERN = r"^[0-9]{1,20}-[0-9]{1,20}$"
StreamId = Annotated[str, Strict(), StringConstraints(pattern=STREAM_ID_PATTERN)]

_OPAQUE_ID = re.compile(OPAQUE_ID_PATTERN)
_STREAM_ID = re.compile(STREAM_ID_PATTERN)


def is_opaque_id(value: str) -> bool:
    return _OPAQUE_ID.fullmatch(value) is not None


def is_stream_id(value: str) -> bool:
    return _STREAM_ID.fullmatch(value) is not None


class EventType(StrEnum):
    CREATED = "appointment.created"
    UPDATED = "appointment.updated"
    RESCHEDULED = "appointment.rescheduled"
    CANCELLED = "appointment.cancelled"
    REMINDER = "appointment.reminder"
    CHECKED_IN = "appointment.checked_in"
    NOTE_ADDED = "appointment.note_added"


class AppointmentData(BaseModel):
    """The appointment's fields. Unknown fields pass through untouched, so a
    publisher can add one without redeploying this service."""

    model_config = ConfigDict(extra="allow")

    status: Annotated[str, Strict(), StringConstraints(max_length=32)] | None = None
    starts_at: Timestamp | None = None
    ends_at: Timestamp | None = None
    location_id: OpaqueId | None = None
    clinician_id: OpaqueId | None = None


class EventCreate(BaseModel):
    """An event as a publisher submits it. Unknown top-level fields are rejected."""

    model_config = ConfigDict(extra="forbid")

    type: EventType
    patient_id: OpaqueId
    appointment_id: OpaqueId
    occurred_at: Timestamp
    data: AppointmentData = Field(default_factory=AppointmentData)

    def rule_violation(self) -> str | None:
        """The business rule that shape validation cannot express, or None."""
        starts, ends = self.data.starts_at, self.data.ends_at
        if starts is not None and ends is not None and starts >= ends:
            return "data.starts_at must be before data.ends_at"
        return None


class EventStored(EventCreate):
    """An event as it travels on Redis. `id` is its history-stream id (absent for a
    raw `PUBLISH`, which therefore cannot be resumed); `published_at` is stamped by
    the publish path and feeds the publish-to-delivery latency metric."""

    id: StreamId | None = None
    published_at: Timestamp | None = None


class EventResponse(EventCreate):
    """What `POST /v1/events` answers: the stored event with its resumable id."""

    id: StreamId
    published_at: AwareDatetime
