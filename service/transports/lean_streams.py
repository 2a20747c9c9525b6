"""The SSE routes' lean path: the same answers without FastAPI's routing and
dependency solving on every stream open.

A reconnect storm is thousands of `GET …/events` within a second, and profiles
of one (bench/results/NOTES.md, issue 15) put a third of a connection's CPU in
the framework: the route search through every router, `solve_dependencies`
(signature inspection, a dependency cache, an exit stack per request) and the
exception wrappers around them. This ASGI layer, inside the edge middleware
(request id, access line, CORS), answers the three SSE routes itself with the
very functions the FastAPI routes call: `get_sse_principal` (ticket or bearer,
revocation), `sse_request` (the one reading of the SSE parameters, defined in
`service/transports/sse.py`), `open_sse` (scope, draining, admission, the
stream) and the one domain-error mapping. The FastAPI routes stay registered:
they are the OpenAPI document, and they answer whatever this layer does not
take (HEAD, a parameter FastAPI would refuse with its 422, a process not started).
`tests/api/test_lean_streams.py` holds the two paths to the same answers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from fastapi.routing import APIRoute
from notify_publisher.events import OPAQUE_ID_PATTERN
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.deps.auth import get_sse_principal
from service.errors import domain_error_response
from service.services.errors import DomainError
from service.state import AppState
from service.transports.sse import (
    LAST_EVENT_ID_HEADER,
    LAST_EVENT_ID_QUERY,
    LAST_EVENT_ID_QUERY_MAX,
    open_sse,
    sse_request,
)

PREFIX: Final = "/v1/patients/"
_OPAQUE_ID: Final = re.compile(OPAQUE_ID_PATTERN)


class LeanStreamRoutes:
    """Answers `GET` on the SSE routes of `routes` (the FastAPI `APIRoute`s, for
    their path patterns and so that `scope["route"]` names them as routing would)."""

    def __init__(self, app: ASGIApp, *, routes: list[APIRoute]) -> None:
        self.app = app
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]  # as Starlette's routing matches it
        state = scope.get("state", {}).get("notify")
        if not path.startswith(PREFIX) or not isinstance(state, AppState):
            await self.app(scope, receive, send)
            return
        matched = self._match(path)
        if matched is None:
            await self.app(scope, receive, send)
            return
        route, params = matched
        # One request object for the whole open: its query string and headers are
        # parsed once, here and by the ticket and bearer look-ups alike.
        request = Request(scope, receive)
        query = request.query_params.get(LAST_EVENT_ID_QUERY)
        if query is not None and len(query) > LAST_EVENT_ID_QUERY_MAX:
            await self.app(scope, receive, send)  # FastAPI's 422, word for word
            return
        scope["route"] = route
        scope["path_params"] = params
        response = await self._open(state, request, params, query)
        await response(scope, receive, send)

    def _match(self, path: str) -> tuple[APIRoute, dict[str, str]] | None:
        for route in self._routes:
            found = route.path_regex.match(path)
            if found is None:
                continue
            params = found.groupdict()
            if not all(_OPAQUE_ID.fullmatch(value) for value in params.values()):
                return None  # the route's own validation answers (422)
            return route, params
        return None

    @staticmethod
    async def _open(
        state: AppState, request: Request, params: dict[str, str], query: str | None
    ) -> Response:
        try:
            sse = await sse_request(
                request,
                state,
                await get_sse_principal(request, state),
                last_event_id=request.headers.get(LAST_EVENT_ID_HEADER),
                last_event_id_query=query,
            )
            return open_sse(
                sse,
                patient_id=params.get("patient_id"),
                appointment_id=params.get("appointment_id"),
            )
        except DomainError as exc:
            return domain_error_response(exc)


def stream_routes(routes: Sequence[object]) -> list[APIRoute]:
    """The SSE routes among `routes`, in registration order (`/me` first)."""
    return [
        r
        for r in routes
        if isinstance(r, APIRoute)
        and r.path.startswith(PREFIX)
        and r.path.endswith("/events")
        and "GET" in (r.methods or ())
    ]
