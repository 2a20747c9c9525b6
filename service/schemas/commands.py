"""One entry of the `{prefix}commands` Redis Stream, as backends consume it.

Every value is a string on the wire (Redis Stream fields); optional fields are
absent rather than empty. Format version 1 (`v`): new optional fields may be added
without a version bump, so consumers must ignore fields they do not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final, Literal

from notify_publisher.events import OpaqueId, Timestamp
from pydantic import BaseModel, ConfigDict, Field

from service.schemas.ws import ClientRef, CommandAction

COMMAND_FORMAT_VERSION: Final = "1"


class CommandRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal["1"] = COMMAND_FORMAT_VERSION
    action: CommandAction
    appointment_id: OpaqueId
    patient_id: OpaqueId = Field(description="Whose appointment: the token's subject.")
    sub: OpaqueId = Field(description="Who asked (the token's `sub`), never a frame field.")
    role: str
    jti: str | None = Field(default=None, description="The token's id, for audit.")
    client_ref: ClientRef | None = Field(
        default=None, description="The client's `id` for the command, to deduplicate retries."
    )
    preferred_starts_at: Timestamp | None = None
    requested_at: Timestamp

    def to_fields(self) -> dict[str, str]:
        """The Redis Stream fields (strings; `None` fields left out)."""
        fields: dict[str, str] = {}
        for name, value in self.model_dump(exclude_none=True).items():
            fields[name] = value.isoformat() if isinstance(value, datetime) else str(value)
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, str] | Mapping[bytes, bytes]) -> CommandRecord:
        """Parse an entry as read with XRANGE / XREADGROUP (bytes or str)."""
        decoded = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        return cls.model_validate(decoded)
