"""Domain errors mapped to HTTP in one place, plus the last-resort handler."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.schemas.errors import ErrorResponse
from service.services.errors import (
    DomainError,
    EventTooLargeError,
    ForbiddenError,
    InvalidEventError,
    NotFoundError,
    UnauthorizedError,
    UnavailableError,
)

log = structlog.get_logger(__name__)

_DESCRIPTIONS = {
    400: "The request breaks a business rule (its shape is fine).",
    401: "No valid credential (one answer for every reason).",
    403: "Authenticated, but this role or scope may not do this.",
    404: "Not found, or somebody else's (indistinguishable).",
    413: "The body or event is above the event size limit.",
    503: "Redis unreachable or refusing (`code`: `redis_oom`, `redis_readonly` …), or over "
    "capacity: retry after `Retry-After` seconds.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route's error statuses (422 FastAPI adds itself)."""
    return {
        status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }


_STATUS: list[tuple[type[DomainError], int]] = [
    (UnauthorizedError, 401),
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (InvalidEventError, 400),
    (EventTooLargeError, 413),
    (UnavailableError, 503),
]


def status_for(exc: DomainError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 400


def domain_error_response(exc: DomainError) -> JSONResponse:
    status = status_for(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, UnauthorizedError):
        # One body for every reason: a bad token and a revoked one look alike.
        headers["WWW-Authenticate"] = 'Bearer realm="notify"'
    if isinstance(exc, UnavailableError):
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONResponse(
        {"detail": exc.public_message, "code": exc.code}, status_code=status, headers=headers
    )


async def handle_domain_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return domain_error_response(exc)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """Log the traceback; tell the client nothing internal, only the request id."""
    request_id = getattr(request.state, "request_id", None)
    log.error("unhandled_error", error=type(exc).__name__, exc_info=exc)
    return JSONResponse({"detail": "internal error", "request_id": request_id}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, handle_domain_error)
    app.add_exception_handler(Exception, handle_unexpected)
