"""The WebSocket session behind `WS /v1/ws`, after its handshake (the route and
the handshake: `service/routers/ws.py`; the connection: `service/fanout/
ws_connection.py:WsConnection`; what a client frame does: `service/transports/
ws_handlers.py`; protocol: `service/schemas/ws.py`, `docs/websocket.md`,
`docs/asyncapi.json`).

Authentication never puts a token in the URL: a stream ticket (`?ticket=`) or an
`Authorization: Bearer` header at the handshake (refused with an HTTP 401 denial
response), or else an `auth` frame first, within `NOTIFY_WS_AUTH_TIMEOUT_S`
(refused with close 4401). Nothing is sent before authentication succeeded.

The session (`WsSession`) is run by the edge middleware once FastAPI's routing has
returned (`service/middleware.py:defer_stream`), like an SSE body: it keeps no
route coroutine, dependency exit stack or Starlette `WebSocket`. It reads the
first-frame `auth` if needed (through ASGI), admits the connection, and then:

- under `notify serve` (`service/transports/ws_protocol.py:WsHandOver`), hands the socket to
  the connection's stream (`service/transports/ws_stream.py:WsStream`) and returns:
  no task, no ASGI `send`/`receive`, no scope, no uvicorn protocol is kept. The
  edge middleware's access line waits for the stream's end.
- under any other server, runs a reader and a writer task over the server's
  `receive`/`send` (`WsSocket`); the first to finish cancels the other. A reader
  is not optional: uvicorn stops reading the socket until the app calls
  `receive()`, so a send-only handler leaves protocol pongs unread and dies of
  "keepalive ping timeout".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

import structlog
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected

from service import metrics
from service.deps.auth import authenticate
from service.fanout.clock import SendWatch
from service.fanout.closing import CloseReason, Ending
from service.fanout.ws_connection import (
    INTERNAL,
    OVER_CAPACITY,
    UNAUTHORIZED,
    UNAVAILABLE,
    WsConnection,
)
from service.middleware import handed_over
from service.schemas.ws import CLIENT_MESSAGE, AuthenticatedMessage, AuthMessage
from service.services.errors import UnauthorizedError, UnavailableError
from service.services.principal import Principal
from service.state import AppState
from service.transports.hand_over import DISCONNECT_EXTENSION, DisconnectHook
from service.transports.ws_handlers import handle, reconnect_text
from service.transports.ws_protocol import WS_HAND_OVER_EXTENSION, WsHandOver
from service.transports.ws_stream import WsStream
from service.wire.ws import message_text

log = structlog.get_logger("service.ws")

# Sending the reconnect hint and the close frame must not hold a handler forever.
CLOSE_TIMEOUT_S: Final = 5.0


class _ClientGone(Exception):
    """The peer went away (or stopped reading past the send timeout)."""


class WsSocket:
    """An accepted WebSocket as the session uses it: the server's ASGI `receive` and
    `send`, with Starlette's `WebSocket` rules for the states a session meets (no
    scope kept). Nothing is received after the client's disconnect and nothing sent
    after our close (`WebSocketDisconnected`); a send on a transport already gone
    raises `WebSocketDisconnect` (1006)."""

    __slots__ = ("_closed", "_gone", "_receive", "_send")

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._gone = False
        self._closed = False

    async def receive(self) -> Message:
        if self._gone:
            raise WebSocketDisconnected(
                'Cannot call "receive" once a disconnect message has been received.'
            )
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            self._gone = True
        return message

    async def _send_message(self, message: Message) -> None:
        if self._closed:
            raise WebSocketDisconnected('Cannot call "send" once a close message has been sent.')
        if message["type"] == "websocket.close":
            self._closed = True
        try:
            await self._send(message)
        except OSError:
            self._closed = True
            raise WebSocketDisconnect(code=1006) from None

    async def send_text(self, data: str) -> None:
        await self._send_message({"type": "websocket.send", "text": data})

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await self._send_message({"type": "websocket.close", "code": code, "reason": reason or ""})


class WsSession:
    """What a WebSocket does once its handshake is accepted: the first-frame `auth`
    when the handshake carried no credentials, admission, then the hand-over to its
    stream (or the connection's loop). An ASGI app, run by the edge middleware
    after routing has returned (or by the route itself when no middleware takes
    it); past the hand-over it keeps nothing."""

    __slots__ = ("_principal", "_state")

    def __init__(self, state: AppState, principal: Principal | None) -> None:
        self._state = state
        self._principal = principal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        extensions = scope.get("extensions") or {}
        # Our uvicorn protocol's hook: resets the connection after an aborted send.
        hook = extensions.get(DISCONNECT_EXTENSION)
        hand_over = extensions.get(WS_HAND_OVER_EXTENSION)
        state, principal = self._state, self._principal
        socket = WsSocket(receive, send)
        reply_to: str | None = None
        if principal is None:
            outcome = await first_message_auth(socket, state)
            if outcome is None:
                return
            principal, reply_to = outcome
        # Kept only while the socket can still be handed over (the access line
        # then waits for the stream's end); the connection's loop keeps no scope.
        kept = scope if isinstance(hand_over, WsHandOver) else None
        del scope
        stream = await serve(
            socket,
            state,
            principal,
            reply_to,
            hook if isinstance(hook, DisconnectHook) else None,
            hand_over if isinstance(hand_over, WsHandOver) else None,
            request_id=kept.get("state", {}).get("request_id") if kept is not None else None,
        )
        if stream is not None and kept is not None:
            # The edge middleware's access line waits for the stream's end.
            handed_over(kept, stream)


async def close_with(websocket: WsSocket, state: AppState, ending: Ending) -> None:
    """The reconnect hint (when retrying can succeed), then the close frame
    (`service/fanout/closing.py` has both for every reason)."""
    if ending.ws_code is None:
        return
    with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected, TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            hint = reconnect_text(ending, state.settings.sse_retry_ms)
            if hint is not None:
                await websocket.send_text(hint)
            await websocket.close(code=int(ending.ws_code), reason=ending.ws_reason)


async def first_message_auth(
    websocket: WsSocket, state: AppState
) -> tuple[Principal, str | None] | None:
    """The principal of a first `auth` frame, or None once the socket was closed."""
    try:
        async with asyncio.timeout(state.settings.ws_auth_timeout_s):
            message = await websocket.receive()
    except TimeoutError:
        metrics.AUTH_REFUSALS.labels(reason="missing").inc()
        await close_with(websocket, state, UNAUTHORIZED)
        return None
    if message["type"] == "websocket.disconnect":
        return None
    auth: AuthMessage | None = None
    text = message.get("text")
    if text is not None:
        with contextlib.suppress(ValidationError):
            parsed = CLIENT_MESSAGE.validate_json(text)
            auth = parsed if isinstance(parsed, AuthMessage) else None
    if auth is None:
        metrics.AUTH_REFUSALS.labels(reason="missing").inc()
        await close_with(websocket, state, UNAUTHORIZED)
        return None
    try:
        principal = await authenticate(state, auth.token)
    except UnauthorizedError:
        await close_with(websocket, state, UNAUTHORIZED)
        return None
    except UnavailableError:
        await close_with(websocket, state, UNAVAILABLE)
        return None
    return principal, auth.id


def _connection(state: AppState, principal: Principal) -> WsConnection:
    return WsConnection(
        settings=state.settings,
        hub=state.hub,
        history=state.history,
        limiter=state.limiter,
        broker=state.broker,
        keys=state.keys,
        principal=principal,
        clock=state.clock,
    )


def _opened(
    state: AppState, conn: WsConnection, principal: Principal, reply_to: str | None
) -> None:
    """An admitted connection's first reply (and its close, when the drain began
    between the handshake and now: it did not see this connection)."""
    if state.draining:
        conn.queue.close(CloseReason.SHUTDOWN)
    conn.reply(
        message_text(AuthenticatedMessage(expires_at=int(principal.expires_at), reply_to=reply_to))
    )


async def serve(
    websocket: WsSocket,
    state: AppState,
    principal: Principal,
    reply_to: str | None,
    hook: DisconnectHook | None = None,
    hand_over: WsHandOver | None = None,
    *,
    request_id: str | None = None,
) -> WsStream | None:
    """Admit the connection, then give its socket to its stream (returned) when
    the server offers a hand-over; else (or when the client left meanwhile) run
    the connection's loop over ASGI, a reader and a writer task."""
    conn = _connection(state, principal)
    if conn.admit() is not None:
        await close_with(websocket, state, OVER_CAPACITY)
        return None
    if hand_over is not None:
        stream = WsStream(connection=conn, state=state)
        taken = hand_over.take(stream)
        if taken is not None:
            _opened(state, conn, principal, reply_to)
            stream.take(taken, request_id=request_id)
            return stream
    await _serve_admitted(websocket, state, conn, principal, reply_to, hook)
    return None


async def _serve_admitted(
    websocket: WsSocket,
    state: AppState,
    conn: WsConnection,
    principal: Principal,
    reply_to: str | None,
    hook: DisconnectHook | None,
) -> None:
    end_reason = CloseReason.CLIENT_GONE
    try:
        _opened(state, conn, principal, reply_to)
        closing = await _run(websocket, state, conn, hook)
        if closing is not None:
            end_reason = closing.reason
            await close_with(websocket, state, closing)
    except Exception:
        end_reason = CloseReason.INTERNAL_ERROR
        log.exception("ws_failed")
        await close_with(websocket, state, INTERNAL)
    finally:
        await conn.end(reason=end_reason)


async def _run(
    websocket: WsSocket, state: AppState, conn: WsConnection, hook: DisconnectHook | None
) -> Ending | None:
    """Reader and writer side by side; the first to finish ends the other. Returns
    how to close, or None when the client is gone. A send the clock aborted resets
    the connection (under our uvicorn protocol: `hook`): no close frame can pass,
    and a graceful close would wait for the peer to read."""
    # A peer that stopped reading blocks the write once buffers are full; the
    # process' clock aborts a send stuck past NOTIFY_SEND_TIMEOUT_S and
    # the peer is treated as gone (no close frame could pass). No timer per send.
    watch = SendWatch()

    async def send(text: str) -> None:
        watch.send_started = time.monotonic()
        try:
            await websocket.send_text(text)
        except (WebSocketDisconnect, WebSocketDisconnected) as exc:
            raise _ClientGone from exc
        finally:
            watch.send_started = 0.0

    reader = asyncio.create_task(_read(websocket, state, conn), name="ws-read")
    writer = asyncio.create_task(conn.write(send), name="ws-write")
    watch.task = writer
    # No heartbeats: uvicorn's protocol pings keep a WebSocket alive.
    state.clock.add(watch)
    try:
        done, _ = await asyncio.wait((reader, writer), return_when=asyncio.FIRST_COMPLETED)
        if writer not in done and _requested_close(reader):
            # The reader asked for the close: the writer sends the pending error
            # replies first, then returns that close.
            done, _ = await asyncio.wait((writer,), timeout=CLOSE_TIMEOUT_S)
            if writer not in done:
                done = {reader}
    finally:
        for task in (reader, writer):
            task.cancel()
        # Their outcome is read below; a cancellation of this task still propagates.
        await asyncio.wait((reader, writer))
        state.clock.discard(watch)
        watch.release()
    first = writer if writer in done else reader
    if first is writer and watch.aborted:
        if hook is not None:
            await hook.abort()
        return None
    try:
        return first.result()
    except _ClientGone:
        return None


def _requested_close(reader: asyncio.Task[Ending | None]) -> bool:
    return (
        reader.done()
        and not reader.cancelled()
        and reader.exception() is None
        and reader.result() is not None
    )


async def _read(websocket: WsSocket, state: AppState, conn: WsConnection) -> Ending | None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        closing = await handle(message.get("text"), state, conn)
        if closing is not None:
            conn.request_close(closing)
            return closing
