"""Pure ASGI middleware (never `BaseHTTPMiddleware`: it breaks streaming,
disconnect detection and contextvars): request id, timing, one access line."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("service.access")

REQUEST_ID_HEADER = "x-request-id"
# A caller-supplied id is kept only if it is short and plain (it lands in logs).
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# A stream may ask, under this scope key, to be run from here once the framework's
# per-request machinery (routing, dependency exit stacks, exception wrappers, the
# `Request`/`WebSocket` object) has unwound: an idle stream then holds only what it
# needs. An SSE body (`service/transports/sse_response.py`) and a WebSocket session
# after its handshake (`service/transports/ws.py:WsSession`) both ask: `defer_stream`.
DEFERRED_STREAM = "notify.deferred_stream"
# An SSE stream that took its socket over (`service/transports/sse_stream.py`) puts
# itself here: the request's access line is written when the stream ends.
HANDED_OVER = "notify.handed_over"
# Probes and scrapes would drown the access log.
QUIET_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})


def _incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _SAFE_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def defer_stream(scope: Scope, stream: ASGIApp) -> bool:
    """Hand `stream` to the edge middleware, which runs it once routing returned.
    False when nothing takes it (no `RequestContextMiddleware` around this app, or a
    stream already registered): the caller then runs it itself."""
    deferred = scope.get(DEFERRED_STREAM)
    if deferred is None or deferred:
        return False
    deferred.append(stream)
    return True


class EndsLater(Protocol):
    """A stream that outlives its request's ASGI call."""

    def at_end(self, done: Callable[[], None]) -> None: ...


def handed_over(scope: Scope, stream: EndsLater) -> None:
    """`stream` owns the connection now: the access line waits for its end."""
    scope[HANDED_OVER] = stream


class AccessLine:
    """One request's access line: the path without its query string (which may
    hold a stream ticket), the route template when routing matched."""

    __slots__ = ("method", "path", "request_id", "route", "started", "status")

    def __init__(self, scope: Scope, *, request_id: str, started: float, status: int) -> None:
        # Interned: a stream keeps its line for hours, and the method and the path
        # (`/v1/patients/me/events`) are the same strings for thousands of them.
        self.method: str = sys.intern(scope.get("method", "WS"))
        self.path: str = sys.intern(scope["path"])
        self.route: Any = getattr(scope.get("route"), "path", None)
        self.request_id = request_id
        self.started = started
        self.status = status

    def __call__(self) -> None:
        """The line as a stream's `at_end` callback (no bound method kept per stream)."""
        self.log()

    def log(self) -> None:
        if self.path in QUIET_PATHS:
            return
        log.info(
            "request",
            method=self.method,
            path=self.path,
            route=self.route,
            status=self.status,
            duration_ms=round((time.perf_counter() - self.started) * 1000, 1),
        )


def _release_closed_exit_stacks(scope: Scope) -> None:
    """The framework's per-request exit stacks are closed once routing returned;
    the scope would otherwise keep them (and their buffers) for the stream's life."""
    for key in [k for k, v in scope.items() if isinstance(v, contextlib.AsyncExitStack)]:
        del scope[key]


class RequestContextMiddleware:
    """Binds `request_id` for every log line of a request or WebSocket, echoes it in
    `X-Request-ID`, and logs one line when the request ends. The line carries the
    path without its query string (which may hold a stream ticket) and the route
    template when routing matched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append("X-Request-ID", request_id)
            elif message["type"] == "websocket.accept":
                status = 101
            await send(message)

        deferred: list[ASGIApp] = []
        scope[DEFERRED_STREAM] = deferred
        try:
            await self.app(scope, receive, send_with_id)
            if deferred:
                stream = deferred.pop()
                del scope[DEFERRED_STREAM]
                _release_closed_exit_stacks(scope)
                # A WebSocket session starts after `websocket.accept` (status 101 is
                # known): it sends straight to the server.
                await stream(scope, receive, send_with_id if scope["type"] == "http" else send)
        except Exception:
            status = 500
            raise
        finally:
            line = AccessLine(scope, request_id=request_id, started=started, status=status)
            owner: EndsLater | None = scope.pop(HANDED_OVER, None)
            if owner is not None:
                # Written at the stream's end, with the same fields.
                owner.at_end(line)
            else:
                line.log()
            structlog.contextvars.clear_contextvars()


class RequestBodyLimitMiddleware:
    """Refuses a request body above `max_bytes` with 413 before it is read whole.

    A declared `Content-Length` above the limit is answered at once; a chunked
    body is counted as it arrives and the request fails with 413 on the chunk
    that crosses the limit (FastAPI passes an `HTTPException` from `receive` on)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await self._refuse(send)
                    return
                break
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, limited_receive, send)

    def _detail(self) -> str:
        return f"request body above the limit of {self.max_bytes} bytes"

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": self._detail(), "code": "body_too_large"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
