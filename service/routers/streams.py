"""SSE routes. `/me` routes are registered before `/{patient_id}` so that "me" is
never taken for a patient id. The routes orchestrate only: the parameters are
read by `service/transports/sse.py:sse_request`, the stream is opened by
`open_sse` there (also called by the lean front door,
`service/transports/lean_streams.py`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from notify_publisher.events import OPAQUE_ID_PATTERN
from starlette.responses import Response

from service.errors import error_responses
from service.transports.sse import SseRequest, open_sse, sse_request

router = APIRouter(prefix="/v1/patients", tags=["streams"])

PatientId = Annotated[str, Path(pattern=OPAQUE_ID_PATTERN)]
AppointmentId = Annotated[str, Path(pattern=OPAQUE_ID_PATTERN)]

SseRequestDep = Annotated[SseRequest, Depends(sse_request)]


# Refusals a client should retry (capacity, Redis, draining) are a 200 event
# stream with `retry:` and `event: reconnect` (EventSource gives up on any non-200).
STREAM_ERRORS = error_responses(401, 403, 404)


@router.get(
    "/me/events",
    summary="SSE stream of the caller's appointment events",
    responses=STREAM_ERRORS,
)
async def my_events(sse: SseRequestDep) -> Response:
    """The caller's own events (patient tokens)."""
    return open_sse(sse, patient_id=None, appointment_id=None)


@router.get(
    "/me/appointments/{appointment_id}/events",
    summary="SSE stream of one of the caller's appointments",
    responses=STREAM_ERRORS,
)
async def my_appointment_events(sse: SseRequestDep, appointment_id: AppointmentId) -> Response:
    """Only the events of `appointment_id` (an appointment of the caller's)."""
    return open_sse(sse, patient_id=None, appointment_id=appointment_id)


@router.get(
    "/{patient_id}/events",
    summary="SSE stream of a patient's events (staff)",
    responses=STREAM_ERRORS,
)
async def patient_events(sse: SseRequestDep, patient_id: PatientId) -> Response:
    """Staff only; a patient naming anyone but themselves gets 404."""
    return open_sse(sse, patient_id=patient_id, appointment_id=None)
