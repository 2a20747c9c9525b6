"""Errors mapped to HTTP in one place: domain errors, the framework's own (422 for a
wrong shape, 404 for an unknown path, 405), and the last-resort handler. Every
body has one shape, `ErrorResponse`: `detail`, `code`, and `errors` on a 422."""

from __future__ import annotations

from typing import Any, Final

import structlog
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.schemas.errors import ErrorResponse, FieldError
from service.services.errors import (
    ConflictError,
    DomainError,
    EventTooLargeError,
    ForbiddenError,
    IdempotencyKeyReusedError,
    InvalidEventError,
    NotFoundError,
    RateLimitedError,
    UnauthorizedError,
    UnavailableError,
)

log = structlog.get_logger(__name__)

_DESCRIPTIONS = {
    400: "The request breaks a business rule (its shape is fine).",
    401: "No valid credential (one answer for every reason).",
    403: "Authenticated, but this role or scope may not do this.",
    404: "Not found, or somebody else's (indistinguishable).",
    409: "Conflicts with a request still in progress (an Idempotency-Key whose first "
    "request still waits for replicas): retry after `Retry-After` seconds.",
    413: "The body or event is above the event size limit.",
    422: "The request does not have the expected shape (`errors` lists each field), "
    "or its Idempotency-Key was used for another event (`idempotency_key_reused`).",
    429: "Too many requests: retry after `Retry-After` seconds.",
    503: "Redis unreachable or refusing (`code`: `redis_oom`, `redis_readonly` …), a durable "
    "publish not confirmed by enough replicas (`not_durable`), or over capacity: retry "
    "after `Retry-After` seconds (a publish with the same Idempotency-Key).",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route's error statuses, 422 always among them (in
    the one error shape, not FastAPI's own `HTTPValidationError`)."""
    return {
        status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        for status in sorted({*statuses, 422})
    }


_STATUS: list[tuple[type[DomainError], int]] = [
    (UnauthorizedError, 401),
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (InvalidEventError, 400),
    (IdempotencyKeyReusedError, 422),
    (EventTooLargeError, 413),
    (RateLimitedError, 429),
    (UnavailableError, 503),
]

# The framework's own refusals (routing, body limit, not started yet) by status.
_HTTP_CODES: Final = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    503: "unavailable",
}


def status_for(exc: DomainError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 400


def error_body(detail: str, code: str, errors: list[FieldError] | None = None) -> dict[str, Any]:
    return ErrorResponse(detail=detail, code=code, errors=errors).model_dump(exclude_none=True)


def domain_error_response(exc: DomainError) -> JSONResponse:
    status = status_for(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, UnauthorizedError):
        # One body for every reason: a bad token and a revoked one look alike.
        headers["WWW-Authenticate"] = 'Bearer realm="notify"'
    if isinstance(exc, UnavailableError | ConflictError | RateLimitedError):
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONResponse(
        error_body(exc.public_message, exc.code), status_code=status, headers=headers
    )


async def handle_domain_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return domain_error_response(exc)


def field_errors(exc: RequestValidationError) -> list[FieldError]:
    """Where and what, never the value sent (`input` may be a token or a name)."""
    return [
        FieldError(
            loc=[part for part in error.get("loc", ()) if isinstance(part, str | int)],
            msg=str(error.get("msg", "")),
            type=str(error.get("type", "")),
        )
        for error in exc.errors()
    ]


async def handle_validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    body = error_body(
        "the request does not have the expected shape", "validation_error", field_errors(exc)
    )
    return JSONResponse(body, status_code=422)


async def handle_http_exception(_: Request, exc: Exception) -> Response:
    """Routing's 404 and 405, a body over the limit, a request before start-up."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse(
        error_body(str(exc.detail), code), status_code=exc.status_code, headers=exc.headers
    )


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """Log the traceback; tell the client nothing internal, only the request id."""
    request_id = getattr(request.state, "request_id", None)
    log.error("unhandled_error", error=type(exc).__name__, exc_info=exc)
    body = ErrorResponse(detail="internal error", code="internal_error", request_id=request_id)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, handle_domain_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(HTTPException, handle_http_exception)
    app.add_exception_handler(Exception, handle_unexpected)
