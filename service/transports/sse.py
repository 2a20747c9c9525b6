"""The SSE transport: one reading of an SSE open's parameters (`sse_request`, for both
front doors: the FastAPI routes of `service/routers/streams.py` and the lean path
`service/transports/lean_streams.py`), admission and the stream's body.

A browser's EventSource gives up for good on any non-200 answer, so every refusal
a client should retry (over capacity, draining, Redis unreachable) is a 200 event
stream carrying a jittered `retry:` and `event: reconnect`, then the end. Only
"you are not authorised" is a 401.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import Header, Query, Request
from starlette.responses import Response

from service import metrics
from service.deps.auth import RetryLater, SSEPrincipalDep
from service.deps.state import StateDep
from service.fanout.closing import ENDINGS, CloseReason
from service.fanout.connection import SseConnection, jittered_retry_ms
from service.fanout.queue import Delivery
from service.services.channels import resolve_stream_scope
from service.services.errors import UnavailableError
from service.services.history import valid_resume_id
from service.services.principal import Principal
from service.state import AppState
from service.transports.sse_response import SseStreamResponse
from service.wire.sse import HEARTBEAT, event_block, id_block, json_block, retry_block

SSE_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_DELIVERIES: Final = metrics.DELIVERIES.labels(transport="sse")

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


def _closing_frame(state: AppState, reason: CloseReason) -> bytes:
    """The last frame of a stream ended for `reason` (`service/fanout/closing.py`)."""
    ending = ENDINGS[reason]
    if ending.sse_event is None:
        return b""
    if ending.reconnect is not None:
        return json_block(
            "reconnect", {"reason": ending.public}, jittered_retry_ms(state.settings.sse_retry_ms)
        )
    # Expired, revoked or deleted credentials: reconnecting with them will fail.
    return json_block("closed", {"reason": ending.public})


async def _stream_body(
    state: AppState, connection: SseConnection, resume_from: str | None
) -> AsyncIterator[bytes]:
    """An encoder over the connection's one subscription: `subscribed` owns attach,
    replay start, detach, release and the log pair; this writes SSE frames."""
    queue = connection.queue
    try:
        async with connection.subscribed(resume_from=resume_from) as replay:
            # First bytes only once the channel is subscribed: a client that has seen
            # `retry:` knows every event published from now on reaches it.
            retry = retry_block(jittered_retry_ms(state.settings.sse_retry_ms))
            if replay.fresh:
                # An id-only block: sets the EventSource's last event id without
                # dispatching an event, so its next reconnect resumes from here. Then
                # `resume_point` with the same id, for page code: it cannot read an
                # EventSource's last event id until an event is dispatched, and needs
                # it to resume after the browser gave up (a block without `id:` keeps
                # the id just set).
                head = replay.resume_point
                yield retry + id_block(head) + json_block("resume_point", {"id": head})
            else:
                yield retry
            if replay.start.gap:
                yield json_block("gap", {"oldest_id": replay.start.oldest_id})
            async for page in connection.subscription.replayed(replay):
                yield b"".join([event_block(Delivery.from_event(event)) for event in page])
            # Not kept for the stream's life (its history page and iterator).
            del replay
            while True:
                await queue.wait()
                items = queue.drain()
                if items:
                    yield b"".join([event_block(item) for item in items])
                    SSE_DELIVERIES.inc(len(items))
                    queue.heartbeat_due = False
                elif queue.heartbeat_due:
                    queue.heartbeat_due = False
                    yield HEARTBEAT
                reason = queue.close_reason
                if reason is not None:
                    if reason is not CloseReason.CLIENT_GONE:
                        yield _closing_frame(state, reason)
                    return
    except UnavailableError:
        # History or the channel could not be read: the subscription is released
        # already; the client retries from its last id.
        yield _closing_frame(state, CloseReason.BROKER_UNAVAILABLE)


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
    route = getattr(request.scope.get("route"), "path", request.url.path)
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
    queue = connection.queue
    # Shutdown needs no watcher here: the drain closes every queue itself,
    # staggered, and uvicorn's graceful timeout bounds whatever is left.
    return SseStreamResponse(
        _stream_body(state, connection, sse.resume_from),
        headers=SSE_HEADERS,
        clock=state.clock,
        on_disconnect=lambda: queue.close(CloseReason.CLIENT_GONE),
        heartbeats=queue,
    )
