"""SSE routes. `/me` routes are registered before `/{patient_id}` so that "me" is
never taken for a patient id.

A browser's EventSource gives up for good on any non-200 answer, so every refusal
a client should retry (over capacity, draining, Redis unreachable) is a 200 event
stream carrying a jittered `retry:` and `event: reconnect`, then the end. Only
"you are not authorised" is a 401.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from notify_publisher.events import OPAQUE_ID_PATTERN
from starlette.responses import Response

from service import metrics
from service.deps.auth import RetryLater, SSEPrincipalDep
from service.deps.state import StateDep
from service.errors import error_responses
from service.routers.sse import HEARTBEAT, LeanEventSourceResponse
from service.services.channels import resolve_stream_scope
from service.services.closing import ENDINGS, CloseReason
from service.services.errors import UnavailableError
from service.services.history import valid_resume_id
from service.services.hub import Delivery
from service.services.principal import Principal
from service.services.streams import StreamSession, jittered_retry_ms
from service.state import AppState

router = APIRouter(prefix="/v1/patients", tags=["streams"])

SSE_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_DELIVERIES: Final = metrics.DELIVERIES.labels(transport="sse")

PatientId = Annotated[str, Path(pattern=OPAQUE_ID_PATTERN)]
AppointmentId = Annotated[str, Path(pattern=OPAQUE_ID_PATTERN)]
LastEventIdHeader = Annotated[str | None, Header(alias="Last-Event-ID")]
LastEventIdQuery = Annotated[str | None, Query(alias="last_event_id", max_length=64)]


def _frame(event: str, data: dict[str, object], retry_ms: int | None = None) -> bytes:
    retry = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    return f"{retry}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def retry_later_response(state: AppState, reason: str) -> Response:
    """The SSE refusal a browser will retry: 200, `retry:`, `event: reconnect`, end."""
    body = _frame("reconnect", {"reason": reason}, jittered_retry_ms(state.settings.sse_retry_ms))
    return Response(body, media_type="text/event-stream", headers=SSE_HEADERS)


def _closing_frame(state: AppState, reason: CloseReason) -> bytes:
    """The last frame of a stream ended for `reason` (`service/services/closing.py`)."""
    ending = ENDINGS[reason]
    if ending.sse_event is None:
        return b""
    if ending.reconnect is not None:
        return _frame(
            "reconnect", {"reason": ending.public}, jittered_retry_ms(state.settings.sse_retry_ms)
        )
    # Expired, revoked or deleted credentials: reconnecting with them will fail.
    return _frame("closed", {"reason": ending.public})


async def _stream_body(
    state: AppState, session: StreamSession, resume_from: str | None
) -> AsyncIterator[bytes]:
    """An encoder over the subscription: `subscribed` owns attach, replay start,
    detach, release and the log pair; this writes SSE frames."""
    subscriber = session.subscriber
    try:
        async with session.subscribed(resume_from=resume_from) as replay:
            # First bytes only once the channel is subscribed: a client that has seen
            # `retry:` knows every event published from now on reaches it.
            retry = f"retry: {jittered_retry_ms(state.settings.sse_retry_ms)}\n\n"
            if replay.fresh:
                # An id-only block: sets the EventSource's last event id without
                # dispatching an event, so its next reconnect resumes from here. Then
                # `resume_point` with the same id, for page code: it cannot read an
                # EventSource's last event id until an event is dispatched, and needs
                # it to resume after the browser gave up (a block without `id:` keeps
                # the id just set).
                head = replay.resume_point
                yield f"{retry}id: {head}\n\n".encode() + _frame("resume_point", {"id": head})
            else:
                yield retry.encode()
            if replay.start.gap:
                yield _frame("gap", {"oldest_id": replay.start.oldest_id})
            async for page in session.replayed(replay):
                yield b"".join([Delivery.from_event(event).sse for event in page])
            # Not kept for the stream's life (its history page and iterator).
            del replay
            while True:
                await subscriber.wait()
                items = subscriber.drain()
                if items:
                    yield b"".join([item.sse for item in items])
                    SSE_DELIVERIES.inc(len(items))
                    subscriber.heartbeat_due = False
                elif subscriber.heartbeat_due:
                    subscriber.heartbeat_due = False
                    # A comment: browsers ignore it, proxies and the ALB see bytes.
                    yield HEARTBEAT
                reason = subscriber.close_reason
                if reason is not None:
                    if reason is not CloseReason.CLIENT_GONE:
                        yield _closing_frame(state, reason)
                    return
    except UnavailableError:
        # History or the channel could not be read: the subscription is released
        # already; the client retries from its last id.
        yield _closing_frame(state, CloseReason.BROKER_UNAVAILABLE)


@dataclass(frozen=True, slots=True)
class SSEOpen:
    """What every SSE route needs: the caller, the process state, the resume point."""

    request: Request
    state: AppState
    principal: Principal | RetryLater
    resume_from: str | None


async def sse_open(
    request: Request,
    state: StateDep,
    principal: SSEPrincipalDep,
    last_event_id: LastEventIdHeader = None,
    last_event_id_query: LastEventIdQuery = None,
) -> SSEOpen:
    # The header wins: it is what EventSource sends on its own reconnects.
    resume_from = valid_resume_id(last_event_id or last_event_id_query)
    return SSEOpen(request=request, state=state, principal=principal, resume_from=resume_from)


SSEOpenDep = Annotated[SSEOpen, Depends(sse_open)]


def open_sse(sse: SSEOpen, *, patient_id: str | None, appointment_id: str | None) -> Response:
    request, state, principal = sse.request, sse.state, sse.principal
    if isinstance(principal, RetryLater):
        # Redis (tickets, revocations) or the JWKS is away: not the client's fault.
        return retry_later_response(state, principal.reason)
    scope = resolve_stream_scope(principal, patient_id=patient_id, appointment_id=appointment_id)
    if state.draining:
        return retry_later_response(state, "draining")
    route = getattr(request.scope.get("route"), "path", request.url.path)
    session = StreamSession(
        hub=state.hub,
        history=state.history,
        limiter=state.limiter,
        principal=principal,
        scope=scope,
        transport="sse",
        queue_max=state.settings.client_queue_max,
        route=route,
    )
    if session.admit() is not None:
        return retry_later_response(state, "over_capacity")
    subscriber = session.subscriber
    # Shutdown needs no watcher here: the drain closes every subscriber itself,
    # staggered, and uvicorn's graceful timeout bounds whatever is left.
    return LeanEventSourceResponse(
        _stream_body(state, session, sse.resume_from),
        headers=SSE_HEADERS,
        keepalive=state.keepalive,
        on_disconnect=lambda: subscriber.close(CloseReason.CLIENT_GONE),
        on_heartbeat=subscriber.request_heartbeat,
    )


# Refusals a client should retry (capacity, Redis, draining) are a 200 event
# stream with `retry:` and `event: reconnect` (EventSource gives up on any non-200).
STREAM_ERRORS = error_responses(401, 403, 404)


@router.get(
    "/me/events",
    summary="SSE stream of the caller's appointment events",
    responses=STREAM_ERRORS,
)
async def my_events(sse: SSEOpenDep) -> Response:
    """The caller's own events (patient tokens)."""
    return open_sse(sse, patient_id=None, appointment_id=None)


@router.get(
    "/me/appointments/{appointment_id}/events",
    summary="SSE stream of one of the caller's appointments",
    responses=STREAM_ERRORS,
)
async def my_appointment_events(sse: SSEOpenDep, appointment_id: AppointmentId) -> Response:
    """Only the events of `appointment_id` (an appointment of the caller's)."""
    return open_sse(sse, patient_id=None, appointment_id=appointment_id)


@router.get(
    "/{patient_id}/events",
    summary="SSE stream of a patient's events (staff)",
    responses=STREAM_ERRORS,
)
async def patient_events(sse: SSEOpenDep, patient_id: PatientId) -> Response:
    """Staff only; a patient naming anyone but themselves gets 404."""
    return open_sse(sse, patient_id=patient_id, appointment_id=None)
