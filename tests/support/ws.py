"""A small WebSocket client for tests (the `websockets` package): frames are read
in the background, parsed as JSON, and awaited with a timeout (never a sleep)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

Message = dict[str, Any]


def events_in(messages: list[Message]) -> list[Message]:
    """Every event in `messages`, in order: an `events` message (a batch, sent under
    load) counts as its events one after another, as docs/websocket.md says."""
    got: list[Message] = []
    for m in messages:
        if m.get("type") == "event":
            got.append(m["event"])
        elif m.get("type") == "events":
            got.extend(m["events"])
    return got


class WSClient:
    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.messages: list[Message] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.conn:
                async with self._changed:
                    self.messages.append(json.loads(raw))
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            rcvd = self.conn.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd is not None else 1006
            self.close_reason = rcvd.reason if rcvd is not None else None
            self.closed.set()
            async with self._changed:
                self._changed.notify_all()

    async def send(self, message: Message | str) -> None:
        await self.conn.send(message if isinstance(message, str) else json.dumps(message))

    def of_type(self, kind: str) -> list[Message]:
        return [m for m in self.messages if m.get("type") == kind]

    @property
    def events(self) -> list[Message]:
        return events_in(self.messages)

    async def wait_for(
        self, predicate: Callable[[WSClient], bool], timeout_s: float = 10.0, what: str = ""
    ) -> None:
        async def check() -> None:
            async with self._changed:
                while not predicate(self):
                    if self.closed.is_set():
                        raise AssertionError(
                            f"closed ({self.close_code} {self.close_reason!r}) before: {what}; "
                            f"got {self.messages}"
                        )
                    await self._changed.wait()

        try:
            await asyncio.wait_for(check(), timeout_s)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {timeout_s}s waiting for: {what}; got {self.messages}"
            ) from None

    async def wait_type(self, kind: str, count: int = 1, timeout_s: float = 10.0) -> Message:
        """The `count`-th message of `kind`."""
        await self.wait_for(lambda c: len(c.of_type(kind)) >= count, timeout_s, f"{count}x {kind}")
        return self.of_type(kind)[count - 1]

    async def request(self, message: Message, reply: str, timeout_s: float = 10.0) -> Message:
        """Send `message` with a fresh `id`; the reply of type `reply` (or `error`) to it."""
        ref = f"r{id(message)}-{len(self.messages)}"
        await self.send({**message, "id": ref})

        def answered(c: WSClient) -> bool:
            return any(m.get("reply_to") == ref for m in c.messages)

        await self.wait_for(answered, timeout_s, f"reply to {message.get('type')}")
        (answer,) = [m for m in self.messages if m.get("reply_to") == ref]
        assert answer["type"] == reply, answer
        return answer

    async def wait_events(self, count: int, timeout_s: float = 10.0) -> list[Message]:
        await self.wait_for(lambda c: len(c.events) >= count, timeout_s, f"{count} events")
        return self.events

    async def wait_closed(self, timeout_s: float = 10.0) -> tuple[int | None, str | None]:
        try:
            await asyncio.wait_for(self.closed.wait(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"not closed within {timeout_s}s; got {self.messages}") from None
        return self.close_code, self.close_reason

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.conn.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def bearer_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def open_ws(
    url: str,
    *,
    token: str | None = None,
    auth_frame: str | None = None,
    **kwargs: Any,
) -> AsyncIterator[WSClient]:
    """Connect to `url` (`.../v1/ws`); `token` goes in the bearer header, `auth_frame`
    (a token) is sent as the first `auth` message and its `authenticated` awaited."""
    headers = bearer_headers(token) if token is not None else None
    conn = await connect(url, additional_headers=headers, proxy=None, **kwargs)
    client = WSClient(conn)
    try:
        if auth_frame is not None:
            await client.send({"type": "auth", "token": auth_frame})
            await client.wait_type("authenticated")
        yield client
    finally:
        await client.close()
