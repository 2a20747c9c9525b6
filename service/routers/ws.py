"""`WS /v1/ws`: the bidirectional channel. The route authenticates the handshake
(a stream ticket or an `Authorization: Bearer` header, refused with an HTTP 401
denial response), accepts it and hands the session to the edge middleware, which
runs it once routing has returned (`service/transports/ws.py:WsSession`:
first-frame `auth`, admission, then the socket goes to the connection's stream,
`service/transports/ws_stream.py:WsStream`).
"""

from __future__ import annotations

from fastapi import APIRouter, WebSocket
from starlette.responses import JSONResponse

from service.deps.auth import get_stream_principal
from service.deps.state import get_state
from service.fanout.closing import ENDINGS, CloseReason
from service.fanout.ws_connection import UNAVAILABLE
from service.middleware import defer_stream
from service.services.errors import UnauthorizedError, UnavailableError
from service.services.principal import Principal
from service.transports.ws import WsSession, WsSocket, close_with

router = APIRouter(tags=["websocket"])


def _has_handshake_credentials(websocket: WebSocket) -> bool:
    return "authorization" in websocket.headers or "ticket" in websocket.query_params


async def _deny(websocket: WebSocket) -> None:
    """HTTP 401 instead of the upgrade: a bare close would reach browsers as a 403
    without a code. One body whatever the reason."""
    await websocket.send_denial_response(
        JSONResponse(
            {"detail": "unauthorized", "code": "unauthorized"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="notify"'},
        )
    )


@router.websocket("/v1/ws", name="websocket")
async def websocket_channel(websocket: WebSocket) -> None:
    """Bidirectional channel: subscriptions, events, commands."""
    state = await get_state(websocket)
    principal: Principal | None = None
    if _has_handshake_credentials(websocket):
        try:
            principal = await get_stream_principal(websocket, state)
        except UnauthorizedError:
            await _deny(websocket)
            return
        except UnavailableError:
            # A ticket could not be checked: infrastructure, worth a retry.
            await websocket.accept()
            await close_with(WsSocket(websocket.receive, websocket.send), state, UNAVAILABLE)
            return
    await websocket.accept()
    if state.draining:
        shutdown = ENDINGS[CloseReason.SHUTDOWN]
        await close_with(WsSocket(websocket.receive, websocket.send), state, shutdown)
        return
    session = WsSession(state, principal)
    if not defer_stream(websocket.scope, session):
        await session(websocket.scope, websocket.receive, websocket.send)
