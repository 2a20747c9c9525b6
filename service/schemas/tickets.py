"""Stream tickets (`POST /v1/stream-tickets`)."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, Field


class TicketResponse(BaseModel):
    """A stream ticket: pass it as `?ticket=` to the SSE routes or `WS /v1/ws`."""

    ticket: str = Field(description="Opaque, 256 random bits; valid until `expires_at`.")
    expires_at: AwareDatetime = Field(description="The expiry of the token it was issued for.")
