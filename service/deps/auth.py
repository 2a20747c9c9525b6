"""Who is calling: the principal comes only from a verified bearer token."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from service import metrics
from service.deps.state import StateDep
from service.services.errors import ForbiddenError, UnauthorizedError
from service.services.principal import Principal, Role


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
    if token is None:
        metrics.AUTH_REFUSALS.labels(reason="missing").inc()
        raise UnauthorizedError("missing")
    try:
        return await state.verifier.verify(token)
    except UnauthorizedError as exc:
        metrics.AUTH_REFUSALS.labels(reason=exc.reason).inc()
        raise


async def get_principal(conn: HTTPConnection, state: StateDep) -> Principal:
    """The caller of an API route: bearer token only."""
    try:
        token = bearer_token(conn)
    except UnauthorizedError as exc:
        metrics.AUTH_REFUSALS.labels(reason=exc.reason).inc()
        raise
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


async def get_stream_principal(conn: HTTPConnection, state: StateDep) -> Principal:
    """The caller of a stream route (SSE or WebSocket handshake)."""
    return await get_principal(conn, state)


StreamPrincipalDep = Annotated[Principal, Depends(get_stream_principal)]
