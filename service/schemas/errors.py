"""The body of every error response, 422 included (one shape, rendered by
`service/errors.py`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class FieldError(BaseModel):
    """One part of a request that does not have the expected shape."""

    loc: list[str | int] = Field(
        description="Where: `body`, `query`, `path` or `header`, then the field's path."
    )
    msg: str = Field(description="What is wrong, for a person (never the value sent).")
    type: str = Field(description="Stable machine-readable kind (e.g. `missing`).")


class ErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong, for a person; never internals.")
    code: str = Field(
        description="Stable machine-readable code (`unauthorized`, `validation_error`, "
        "`redis_oom` …)."
    )
    errors: list[FieldError] | None = Field(
        default=None, description="Only on 422 (`validation_error`): each field that is wrong."
    )
    request_id: str | None = Field(
        default=None, description="Only on 500s: quote it when reporting the problem."
    )
