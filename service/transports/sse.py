"""The SSE transport: one reading of an SSE open's parameters (`sse_request`, for both
front doors: the FastAPI routes of `service/routers/streams.py` and the lean path
`service/transports/lean_streams.py`), admission and the stream's body.

A browser's EventSource gives up for good on any non-200 answer, so every refusal
a client should retry (over capacity, draining, Redis unreachable) is a 200 event
stream carrying a jittered `retry:` and `event: reconnect`, then the end. Only
"you are not authorised" is a 401.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import Header, Query, Request
from starlette.responses import Response
from starlette.routing import Route

from service.deps.auth import RetryLater, SSEPrincipalDep
from service.deps.state import StateDep
from service.fanout.connection import SseConnection, jittered_retry_ms
from service.services.channels import resolve_stream_scope
from service.services.history import valid_resume_id
from service.services.principal import Principal
from service.state import AppState
from service.transports.sse_response import SseStreamResponse
from service.transports.sse_stream import SseStream
from service.wire.sse import json_block

SSE_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# An SSE open's parameters, defined once for both front doors: the FastAPI routes
# (`service/routers/streams.py`, for validation and the OpenAPI document) and the
# lean path (`service/transports/lean_streams.py`), which both end in `sse_request`.
LAST_EVENT_ID_HEADER: Final = "Last-Event-ID"
LAST_EVENT_ID_QUERY: Final = "last_event_id"
LAST_EVENT_ID_QUERY_MAX: Final = 64
LastEventIdHeader = Annotated[str | None, Header(alias=LAST_EVENT_ID_HEADER)]
LastEventIdQuery = Annotated[
    str | None, Query(alias=LAST_EVENT_ID_QUERY, max_length=LAST_EVENT_ID_QUERY_MAX)
]


def retry_later_response(state: AppState, reason: str) -> Response:
    """The SSE refusal a browser will retry: 200, `retry:`, `event: reconnect`, end."""
    body = json_block(
        "reconnect", {"reason": reason}, jittered_retry_ms(state.settings.sse_retry_ms)
    )
    return Response(body, media_type="text/event-stream", headers=SSE_HEADERS)


@dataclass(frozen=True, slots=True)
class SseRequest:
    """What every SSE route needs: the caller, the process state, the resume point."""

    request: Request
    state: AppState
    principal: Principal | RetryLater
    resume_from: str | None


async def sse_request(
    request: Request,
    state: StateDep,
    principal: SSEPrincipalDep,
    last_event_id: LastEventIdHeader = None,
    last_event_id_query: LastEventIdQuery = None,
) -> SseRequest:
    """The one reading of an SSE open's parameters: FastAPI's dependency, and what
    the lean path calls with the same values."""
    # The header wins: it is what EventSource sends on its own reconnects.
    resume_from = valid_resume_id(last_event_id or last_event_id_query)
    return SseRequest(request=request, state=state, principal=principal, resume_from=resume_from)


def open_sse(sse: SseRequest, *, patient_id: str | None, appointment_id: str | None) -> Response:
    request, state, principal = sse.request, sse.state, sse.principal
    if isinstance(principal, RetryLater):
        # Redis (tickets, revocations) or the JWKS is away: not the client's fault.
        return retry_later_response(state, principal.reason)
    scope = resolve_stream_scope(principal, patient_id=patient_id, appointment_id=appointment_id)
    if state.draining:
        return retry_later_response(state, "draining")
    matched = request.scope.get("route")
    # The route's template names the stream in logs and metrics; building
    # `request.url` (host header parsing) for a default costs every open.
    route = matched.path if isinstance(matched, Route) else request.url.path
    connection = SseConnection(
        hub=state.hub,
        history=state.history,
        limiter=state.limiter,
        principal=principal,
        scope=scope,
        queue_max=state.settings.client_queue_max,
        route=route,
        clock=state.clock,
    )
    if connection.admit() is not None:
        return retry_later_response(state, "over_capacity")
    # Shutdown needs no watcher here: the drain closes every queue itself,
    # staggered, and uvicorn's graceful timeout bounds whatever is left.
    stream = SseStream(
        connection=connection,
        clock=state.clock,
        retry_ms=state.settings.sse_retry_ms,
        resume_from=sse.resume_from,
    )
    return SseStreamResponse(stream, headers=SSE_HEADERS, clock=state.clock)
