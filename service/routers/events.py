"""The HTTP publish API for backends (service tokens with `events:publish`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from service.deps.auth import require_scope
from service.deps.state import StateDep
from service.errors import error_responses
from service.schemas.events import EventCreate, EventResponse
from service.services.principal import Principal, Scope
from service.services.publisher import publish

router = APIRouter(prefix="/v1/events", tags=["publish"])

Publisher = Annotated[Principal, Depends(require_scope(Scope.EVENTS_PUBLISH))]


@router.post(
    "",
    status_code=201,
    response_model=EventResponse,
    response_model_exclude_none=True,
    responses=error_responses(400, 401, 403, 413, 503),
)
async def publish_event(event: EventCreate, state: StateDep, _: Publisher) -> EventResponse:
    """Append the event to its patient's history and deliver it live."""
    stored = await publish(
        broker=state.broker,
        keys=state.keys,
        event=event,
        history_maxlen=state.settings.history_maxlen,
        history_ttl_s=state.settings.history_ttl_s,
    )
    return EventResponse.model_validate(stored.model_dump())
