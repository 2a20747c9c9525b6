"""The body of every error response (one shape, rendered by `service/errors.py`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong, for a person; never internals.")
    code: str | None = Field(
        default=None, description="Stable machine-readable code (e.g. `unauthorized`)."
    )
    request_id: str | None = Field(
        default=None, description="Only on 500s: quote it when reporting the problem."
    )
