"""The WebSocket connection's reader/writer loop behind `WS /v1/ws` (the route
and its handshake: `service/routers/ws.py`; the connection itself:
`service/fanout/connection.py:WsConnection`; protocol: `service/schemas/ws.py`,
`docs/websocket.md`, `docs/asyncapi.json`).

Authentication never puts a token in the URL: a stream ticket (`?ticket=`) or an
`Authorization: Bearer` header at the handshake (refused with an HTTP 401 denial
response), or else an `auth` frame first, within `NOTIFY_WS_AUTH_TIMEOUT_S`
(refused with close 4401). Nothing is sent before authentication succeeded.

The session after the handshake (`WsSession`) is run by the edge middleware once
FastAPI's routing has returned (`service/middleware.py:defer_stream`), like an SSE
body: an idle socket keeps no route coroutine, dependency exit stack or Starlette
`WebSocket` (which holds the scope), only the server's `receive`/`send`
(`WsSocket`), the process' state and its connection.

Each connection runs a reader and a writer; the first to finish cancels the other.
A reader is not optional: uvicorn stops reading the socket until the app calls
`receive()`, so a send-only handler leaves protocol pongs unread and dies of
"keepalive ping timeout".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
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
from service.fanout.connection import jittered_retry_ms
from service.fanout.ws_connection import (
    INTERNAL,
    OVER_CAPACITY,
    TOO_MANY_INVALID,
    UNAUTHORIZED,
    UNAVAILABLE,
    WsConnection,
)
from service.http_protocol import DISCONNECT_EXTENSION, DisconnectHook
from service.schemas.ws import (
    CLIENT_MESSAGE,
    CLIENT_TYPES,
    AckMessage,
    AuthenticatedMessage,
    AuthMessage,
    CommandAcceptedMessage,
    CommandMessage,
    ErrorCode,
    ErrorMessage,
    PingMessage,
    PongMessage,
    ReconnectMessage,
    SubscribeMessage,
    UnsubscribedMessage,
    UnsubscribeMessage,
)
from service.services.channels import resolve_stream_scope
from service.services.commands import Command, CommandRateLimitedError, submit_command
from service.services.errors import (
    DomainError,
    ForbiddenError,
    NotFoundError,
    UnauthorizedError,
    UnavailableError,
)
from service.services.principal import Principal
from service.state import AppState
from service.wire.ws import message_text

log = structlog.get_logger("service.ws")

# Sending the reconnect hint and the close frame must not hold a handler forever.
CLOSE_TIMEOUT_S: Final = 5.0
_CLIENT_REF = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_GARBAGE: Final = frozenset({ErrorCode.INVALID_MESSAGE, ErrorCode.UNSUPPORTED_TYPE})


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
    when the handshake carried no credentials, then the connection's loop. An ASGI
    app, run by the edge middleware after routing has returned (or by the route
    itself when no middleware takes it); it keeps no scope."""

    __slots__ = ("_principal", "_state")

    def __init__(self, state: AppState, principal: Principal | None) -> None:
        self._state = state
        self._principal = principal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Our uvicorn protocol's hook: resets the connection after an aborted send.
        hook = scope.get("extensions", {}).get(DISCONNECT_EXTENSION)
        del scope  # not needed past the handshake
        state, principal = self._state, self._principal
        socket = WsSocket(receive, send)
        reply_to: str | None = None
        if principal is None:
            outcome = await first_message_auth(socket, state)
            if outcome is None:
                return
            principal, reply_to = outcome
        await serve(
            socket, state, principal, reply_to, hook if isinstance(hook, DisconnectHook) else None
        )


async def close_with(websocket: WsSocket, state: AppState, ending: Ending) -> None:
    """The reconnect hint (when retrying can succeed), then the close frame
    (`service/fanout/closing.py` has both for every reason)."""
    if ending.ws_code is None:
        return
    with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected, TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            if ending.reconnect is not None:
                hint = ReconnectMessage(
                    reason=ending.reconnect,
                    retry_ms=jittered_retry_ms(state.settings.sse_retry_ms),
                )
                await websocket.send_text(message_text(hint))
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


async def serve(
    websocket: WsSocket,
    state: AppState,
    principal: Principal,
    reply_to: str | None,
    hook: DisconnectHook | None = None,
) -> None:
    conn = WsConnection(
        settings=state.settings,
        hub=state.hub,
        history=state.history,
        limiter=state.limiter,
        broker=state.broker,
        keys=state.keys,
        principal=principal,
        clock=state.clock,
    )
    if conn.admit() is not None:
        await close_with(websocket, state, OVER_CAPACITY)
        return
    end_reason = CloseReason.CLIENT_GONE
    try:
        if state.draining:
            # The drain began between the handshake and now: it did not see us.
            conn.queue.close(CloseReason.SHUTDOWN)
        conn.reply(
            message_text(
                AuthenticatedMessage(expires_at=int(principal.expires_at), reply_to=reply_to)
            )
        )
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
        closing = await _handle(message.get("text"), state, conn)
        if closing is not None:
            conn.request_close(closing)
            return closing


def _reply_error(
    conn: WsConnection, code: ErrorCode, message: str, reply_to: str | None
) -> Ending | None:
    if code in _GARBAGE and conn.note_invalid():
        return TOO_MANY_INVALID
    conn.reply(message_text(ErrorMessage(code=code, message=message, reply_to=reply_to)))
    return None


def _error_code(exc: DomainError) -> ErrorCode:
    if isinstance(exc, UnavailableError):
        return ErrorCode.UNAVAILABLE
    if isinstance(exc, NotFoundError):
        return ErrorCode.NOT_FOUND
    if isinstance(exc, ForbiddenError):
        return ErrorCode.FORBIDDEN
    if isinstance(exc, UnauthorizedError):
        return ErrorCode.UNAUTHORIZED
    try:
        return ErrorCode(exc.code)
    except ValueError:
        return ErrorCode.FORBIDDEN


def _invalid_frame(text: str, exc: ValidationError) -> tuple[ErrorCode, str, str | None]:
    """Error code, message and the frame's `id` (when readable) for an invalid frame.
    The message names fields only, never values (a frame may carry a token)."""
    try:
        document = json.loads(text)
    except ValueError:
        return ErrorCode.INVALID_MESSAGE, "not JSON", None
    if not isinstance(document, dict):
        return ErrorCode.INVALID_MESSAGE, "not a JSON object", None
    ref = document.get("id")
    reply_to = ref if isinstance(ref, str) and _CLIENT_REF.fullmatch(ref) else None
    kind = document.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        return ErrorCode.UNSUPPORTED_TYPE, "unknown or missing type", reply_to
    fields = sorted({".".join(str(p) for p in err["loc"][1:]) or kind for err in exc.errors()})
    return ErrorCode.INVALID_MESSAGE, f"invalid: {', '.join(fields[:5])}", reply_to


async def _handle(text: str | None, state: AppState, conn: WsConnection) -> Ending | None:
    """One client frame; a `Ending` when the connection must end."""
    if text is None:
        return _reply_error(conn, ErrorCode.INVALID_MESSAGE, "text frames only", None)
    try:
        message = CLIENT_MESSAGE.validate_json(text)
    except ValidationError as exc:
        code, detail, reply_to = _invalid_frame(text, exc)
        return _reply_error(conn, code, detail, reply_to)
    try:
        await _dispatch(message, state, conn)
    except DomainError as exc:
        return _reply_error(conn, _error_code(exc), exc.public_message, message.id)
    return None


async def _dispatch(
    message: AuthMessage
    | SubscribeMessage
    | UnsubscribeMessage
    | AckMessage
    | PingMessage
    | CommandMessage,
    state: AppState,
    conn: WsConnection,
) -> None:
    if isinstance(message, PingMessage):
        conn.reply(message_text(PongMessage(reply_to=message.id)))
    elif isinstance(message, AckMessage):
        conn.acks += 1
    elif isinstance(message, SubscribeMessage):
        scope = resolve_stream_scope(
            conn.principal, patient_id=message.patient_id, appointment_id=message.appointment_id
        )
        await conn.subscribe(scope, since=message.since, reply_to=message.id)
    elif isinstance(message, UnsubscribeMessage):
        ids = await conn.unsubscribe(message.subscription_id)
        conn.reply(message_text(UnsubscribedMessage(subscription_ids=ids, reply_to=message.id)))
    elif isinstance(message, CommandMessage):
        if not conn.command_limiter.try_take():
            raise CommandRateLimitedError()
        command_id = await submit_command(
            broker=state.broker,
            keys=state.keys,
            principal=conn.principal,
            command=Command(
                action=message.action,
                appointment_id=message.appointment_id,
                client_ref=message.id,
                preferred_starts_at=message.preferred_starts_at,
            ),
            owned=conn.owned,
            maxlen=state.settings.commands_maxlen,
        )
        conn.commands += 1
        conn.reply(message_text(CommandAcceptedMessage(command_id=command_id, reply_to=message.id)))
    else:
        principal = await authenticate(state, message.token)
        conn.extend(principal)
        conn.reply(
            message_text(
                AuthenticatedMessage(expires_at=int(principal.expires_at), reply_to=message.id)
            )
        )
