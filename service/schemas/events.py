"""The appointment event contract (DESIGN.md, "Events").

Shape rules live here (a wrong shape is a 422 at the API). The business rule
`starts_at < ends_at` is a separate check (`rule_violation`) so the API can answer
400 for it: wrong meaning is not wrong shape.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

# Opaque ids: letters, digits, `_` and `-`. No room for names, e-mails or dates of
# birth with spaces, `@` or dots, and nothing that could break a Redis key.
OPAQUE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
OpaqueId = Annotated[str, StringConstraints(pattern=OPAQUE_ID_PATTERN)]
# A Redis Stream entry id: `<milliseconds>-<sequence>`.
STREAM_ID_PATTERN = r"^[0-9]{1,20}-[0-9]{1,20}$"
StreamId = Annotated[str, StringConstraints(pattern=STREAM_ID_PATTERN)]

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

    status: Annotated[str, StringConstraints(max_length=32)] | None = None
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    location_id: OpaqueId | None = None
    clinician_id: OpaqueId | None = None


class EventCreate(BaseModel):
    """An event as a publisher submits it. Unknown top-level fields are rejected."""

    model_config = ConfigDict(extra="forbid")

    type: EventType
    patient_id: OpaqueId
    appointment_id: OpaqueId
    occurred_at: AwareDatetime
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
    published_at: AwareDatetime | None = None


class EventResponse(EventCreate):
    """What `POST /v1/events` answers: the stored event with its resumable id."""

    id: StreamId
    published_at: AwareDatetime
