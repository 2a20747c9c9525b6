"""Who is calling: the principal comes only from a verified bearer token, or, on
the stream routes only, from a stream ticket (`?ticket=`) issued for one.

Both paths end in the same revocation check, and every refusal is the same
`UnauthorizedError` (one 401 body), whatever the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Security
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from service import metrics
from service.deps.state import StateDep
from service.services.errors import ForbiddenError, UnauthorizedError, UnavailableError
from service.services.principal import Principal, Role
from service.services.revocations import RevocationStore
from service.services.tickets import TicketStore
from service.state import AppState

TICKET_PARAM = "ticket"

# The OpenAPI document's security schemes (Swagger UI's Authorize button, generated
# clients sending the token). Declared, never trusted: `auto_error=False` makes them
# parse nothing that matters; `bearer_token` and `stream_ticket` below read the
# credentials, so every refusal stays the one 401 with its metric reason.
BEARER_SCHEME = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="JWT",
    description="A JWT (`Authorization: Bearer <token>`): `sub`, `role`, `scope`, `aud`, "
    "`iss`, `exp`. Backends: a service token with `scope=events:publish`.",
    auto_error=False,
)
TICKET_SCHEME = APIKeyQuery(
    name=TICKET_PARAM,
    scheme_name="ticket",
    description="A stream ticket (`POST /v1/stream-tickets`), for EventSource and "
    "WebSocket clients that cannot set headers; opens streams only.",
    auto_error=False,
)
DocumentedBearer = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER_SCHEME)]
DocumentedTicket = Annotated[str | None, Security(TICKET_SCHEME)]


def ticket_store(state: AppState) -> TicketStore:
    return TicketStore(broker=state.broker, keys=state.keys, reader=state.reads)


def revocation_store(state: AppState) -> RevocationStore:
    return RevocationStore(broker=state.broker, keys=state.keys, reader=state.reads)


def _refused(exc: UnauthorizedError) -> UnauthorizedError:
    metrics.AUTH_REFUSALS.labels(reason=exc.reason).inc()
    return exc


def bearer_token(conn: HTTPConnection) -> str | None:
    """The token of an `Authorization: Bearer …` header, if any."""
    header = conn.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("malformed")
    return token.strip()


async def authenticate(state: StateDep, token: str | None) -> Principal:
    """The principal of a bearer token: verified, and neither it nor its subject
    revoked. `UnauthorizedError` otherwise; `UnavailableError` when Redis (the
    revocation list) or the JWKS cannot be reached, which is not the client's fault."""
    try:
        if token is None:
            raise UnauthorizedError("missing")
        principal = await state.verifier.verify(token)
        await revocation_store(state).ensure_not_revoked(principal)
    except UnauthorizedError as exc:
        raise _refused(exc) from None
    return principal


async def redeem_ticket(state: AppState, ticket: str) -> Principal:
    """The principal a stream ticket stands for, with the same revocation check."""
    try:
        principal = await ticket_store(state).redeem(ticket)
        await revocation_store(state).ensure_not_revoked(principal)
    except UnauthorizedError as exc:
        raise _refused(exc) from None
    return principal


async def get_principal(
    conn: HTTPConnection, state: StateDep, _documented: DocumentedBearer
) -> Principal:
    """The caller of an API route: bearer token only (a stream ticket opens streams
    and nothing else, so `?ticket=` is not even looked at here)."""
    try:
        token = bearer_token(conn)
    except UnauthorizedError as exc:
        raise _refused(exc) from None
    return await authenticate(state, token)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_role(*roles: Role) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    async def check(principal: PrincipalDep) -> Principal:
        if principal.role not in roles:
            raise ForbiddenError()
        return principal

    return check


def require_scope(scope: str) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    async def check(principal: PrincipalDep) -> Principal:
        if not principal.has_scope(scope):
            raise ForbiddenError()
        return principal

    return check


def stream_ticket(conn: HTTPConnection) -> str | None:
    """The `?ticket=` of a stream request, if any (given twice is malformed)."""
    values = conn.query_params.getlist(TICKET_PARAM)
    if not values:
        return None
    if len(values) > 1:
        raise UnauthorizedError("malformed")
    return values[0]


async def get_stream_principal(conn: HTTPConnection, state: StateDep) -> Principal:
    """The caller of a stream route (SSE or WebSocket handshake): a `?ticket=` or a
    bearer token, not both. Neither: `UnauthorizedError("missing")` (a WebSocket
    may then authenticate with its first message)."""
    try:
        ticket = stream_ticket(conn)
        token = bearer_token(conn)
        if ticket is not None and token is not None:
            raise UnauthorizedError("ambiguous")
    except UnauthorizedError as exc:
        raise _refused(exc) from None
    if ticket is not None:
        return await redeem_ticket(state, ticket)
    return await authenticate(state, token)


StreamPrincipalDep = Annotated[Principal, Depends(get_stream_principal)]


@dataclass(frozen=True, slots=True)
class RetryLater:
    """The credentials could not be checked right now (Redis or the JWKS away)."""

    reason: str = "unavailable"


async def get_sse_principal(conn: HTTPConnection, state: StateDep) -> Principal | RetryLater:
    """`get_stream_principal` for SSE routes: an infrastructure failure must become
    the retry-able 200 answer (a browser's EventSource gives up on a 503), so it is
    returned as `RetryLater` for the route to answer with, not raised."""
    try:
        return await get_stream_principal(conn, state)
    except UnavailableError:
        return RetryLater()


async def documented_sse_principal(
    conn: HTTPConnection,
    state: StateDep,
    _bearer: DocumentedBearer,
    _ticket: DocumentedTicket,
) -> Principal | RetryLater:
    """`get_sse_principal` as the SSE routes' dependency: the OpenAPI document then
    lists both ways in (bearer or ticket). The lean path calls `get_sse_principal`."""
    return await get_sse_principal(conn, state)


SSEPrincipalDep = Annotated[Principal | RetryLater, Depends(documented_sse_principal)]
