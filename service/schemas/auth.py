"""Revocations (`POST /v1/revocations`)."""

from __future__ import annotations

from typing import Annotated, Self

from notify_publisher.events import OpaqueId, Timestamp
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    model_validator,
)

# `jti` values are opaque strings chosen by the identity provider; printable ASCII
# without spaces keeps them safe in a Redis key and a log line.
Jti = Annotated[str, Strict(), StringConstraints(pattern=r"^[!-~]{1,256}$")]


class RevocationCreate(BaseModel):
    """Revoke one token (`jti`) or every token of a subject issued until now (`sub`)."""

    model_config = ConfigDict(extra="forbid")

    jti: Jti | None = None
    sub: OpaqueId | None = None
    until: Timestamp = Field(
        description="When the revocation lapses: at least the expiry of the tokens it refuses."
    )

    @model_validator(mode="after")
    def _exactly_one_target(self) -> Self:
        if (self.jti is None) == (self.sub is None):
            raise ValueError("give exactly one of jti and sub")
        return self


class RevocationResponse(BaseModel):
    jti: str | None = None
    sub: str | None = None
    revoked_at: AwareDatetime
    until: AwareDatetime
