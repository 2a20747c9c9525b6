"""Stream tickets: a browser's way to open a stream without a token in the URL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path
from starlette.responses import Response

from service.deps.auth import PrincipalDep, ticket_store
from service.deps.state import StateDep
from service.errors import error_responses
from service.schemas.tickets import TicketResponse
from service.services.errors import ForbiddenError
from service.services.tickets import STREAM_ROLES

router = APIRouter(prefix="/v1/stream-tickets", tags=["auth"])

# Anything a ticket could be; the service decides whether it is one (a 404 either way).
TicketPath = Annotated[str, Path(max_length=128)]


@router.post(
    "",
    status_code=201,
    response_model=TicketResponse,
    responses=error_responses(401, 403, 503),
)
async def create_ticket(
    state: StateDep, principal: PrincipalDep, response: Response
) -> TicketResponse:
    """Issue a stream ticket for the bearer token; it expires with the token."""
    if principal.role not in STREAM_ROLES:
        # Service and admin tokens have no stream to open.
        raise ForbiddenError()
    issued = await ticket_store(state).issue(principal)
    # A credential: no cache may keep it.
    response.headers["Cache-Control"] = "no-store"
    return TicketResponse(
        ticket=issued.ticket, expires_at=datetime.fromtimestamp(issued.expires_at, UTC)
    )


@router.delete("/{ticket}", status_code=204, responses=error_responses(401, 404, 503))
async def delete_ticket(state: StateDep, principal: PrincipalDep, ticket: TicketPath) -> Response:
    """Delete one of the caller's tickets; the streams opened with it end."""
    await ticket_store(state).delete(ticket, owner=principal)
    return Response(status_code=204)
