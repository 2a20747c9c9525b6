"""What a WebSocket client's frame does (`handle`), whoever reads it: the session's
reader task (`service/transports/ws.py`) or the stream that owns the socket
(`service/transports/ws_stream.py:WsStream`). The protocol: `service/schemas/ws.py`,
`docs/websocket.md`, `docs/asyncapi.json`.
"""

from __future__ import annotations

import json
import re
from typing import Final

from pydantic import ValidationError

from service.deps.auth import authenticate
from service.fanout.closing import Ending
from service.fanout.connection import jittered_retry_ms
from service.fanout.ws_connection import TOO_MANY_INVALID, WsConnection
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
from service.state import AppState
from service.wire.ws import message_text

_CLIENT_REF = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_GARBAGE: Final = frozenset({ErrorCode.INVALID_MESSAGE, ErrorCode.UNSUPPORTED_TYPE})


def reconnect_text(ending: Ending, retry_ms: int) -> str | None:
    """The reconnect hint before the close frame, when retrying can succeed."""
    if ending.reconnect is None:
        return None
    return message_text(
        ReconnectMessage(reason=ending.reconnect, retry_ms=jittered_retry_ms(retry_ms))
    )


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


async def handle(text: str | None, state: AppState, conn: WsConnection) -> Ending | None:
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
