"""The HTTP publish API for backends (service tokens with `events:publish`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response
from notify_publisher.events import EventCreate, EventResponse
from notify_publisher.keys import IDEMPOTENCY_KEY_PATTERN

from service.deps.auth import require_scope
from service.deps.state import StateDep
from service.errors import error_responses
from service.services.principal import Principal, Scope
from service.services.publisher import publish

router = APIRouter(prefix="/v1/events", tags=["publish"])

Publisher = Annotated[Principal, Depends(require_scope(Scope.EVENTS_PUBLISH))]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description=(
            "Names this event for retries (IETF httpapi draft): a repeat within "
            "NOTIFY_IDEMPOTENCY_TTL_S answers exactly as the first did (201, same id "
            "and body, `Idempotency-Replayed: true`) and delivers nothing; the same "
            "key with another event is a 422 `idempotency_key_reused`; a repeat while "
            "the first still waits for replicas is a 409."
        ),
    ),
]
# Set on the answer to a repeat: the event was stored by an earlier request.
REPLAYED_HEADER = "Idempotency-Replayed"


@router.post(
    "",
    status_code=201,
    response_model=EventResponse,
    response_model_exclude_none=True,
    responses=error_responses(400, 401, 403, 409, 413, 503),
)
async def publish_event(
    event: EventCreate,
    state: StateDep,
    _: Publisher,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> EventResponse:
    """Append the event to its patient's history and deliver it live."""
    settings = state.settings
    published = await publish(
        broker=state.broker,
        keys=state.keys,
        event=event,
        history_maxlen=settings.history_maxlen,
        history_ttl_s=settings.history_ttl_s,
        idempotency_key=idempotency_key,
        idempotency_ttl_s=settings.idempotency_ttl_s,
        durability=settings.durability(),
    )
    if published.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return EventResponse.model_validate(published.event.model_dump())
