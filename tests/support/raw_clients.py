"""Clients that can end a stream every way a real one does: close politely, reset
the TCP connection, or stop reading. SSE on a bare socket; WebSocket through the
`websockets` package with its transport at hand."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct

from websockets.asyncio.client import ClientConnection, connect

from tests.support.app_server import RunningApp
from tests.support.tokens import bearer

TIMEOUT_S = 60.0


def set_reset_on_close(sock: socket.socket | None) -> None:
    """Make the next close send a TCP RST instead of a FIN."""
    assert sock is not None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class RawSSE:
    """An SSE stream on a bare socket, opened once `retry:` arrived (the channel is
    subscribed by then)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(
        cls, app: RunningApp, token: str | None = None, path: str = "/v1/patients/me/events"
    ) -> RawSSE:
        port = int(app.base_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        headers = "".join(f"{k}: {v}\r\n" for k, v in (bearer(token) if token else {}).items())
        # `Connection: close`: the end of the stream is the end of the connection.
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}\r\n".encode()
        )
        await writer.drain()
        stream = cls(reader, writer)
        head = await stream.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"retry:" in await stream.read_until(b"\n\n")
        return stream

    async def read_until(self, marker: bytes) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(marker), TIMEOUT_S)

    async def read_to_end(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(), TIMEOUT_S)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    async def reset(self) -> None:
        set_reset_on_close(self.writer.get_extra_info("socket"))
        self.writer.transport.abort()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def open_ws_subscribed(
    app: RunningApp, token: str | None = None, *, query: str = ""
) -> ClientConnection:
    """A WebSocket with one subscription to the caller's events."""
    conn = await connect(
        f"{app.ws_url}/v1/ws{query}",
        additional_headers=bearer(token) if token else None,
        proxy=None,
    )
    await send_and_wait(conn, {"type": "subscribe"}, "subscribed")
    return conn


async def send_and_wait(conn: ClientConnection, message: dict[str, str], reply: str) -> None:
    await conn.send(json.dumps(message))
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            if json.loads(await conn.recv())["type"] == reply:
                return


async def wait_ws_closed(conn: ClientConnection) -> int | None:
    """The close code the server sent (None when there was none)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(TIMEOUT_S):
            async for _ in conn:
                pass
    return conn.close_code


async def ws_reset(conn: ClientConnection) -> None:
    set_reset_on_close(conn.transport.get_extra_info("socket"))
    conn.transport.abort()
    await conn.wait_closed()


def burst(app: RunningApp, patient_id: str, count: int) -> None:
    """`count` events arriving from the listener at once, before any writer runs:
    more than a small `client_queue_max` makes every stream of `patient_id` too slow."""
    channel = app.state.keys.patient_channel(patient_id)
    for n in range(count):
        raw = json.dumps(
            {
                "id": f"{1700000000000 + n}-0",
                "type": "appointment.updated",
                "patient_id": patient_id,
                "appointment_id": "ap_1",
                "occurred_at": "2026-11-27T09:30:00Z",
                "data": {"starts_at": "2026-12-01T14:00:00Z", "ends_at": "2026-12-01T14:30:00Z"},
            }
        )
        app.state.hub.on_message(channel, raw.encode())


async def all_ended(app: RunningApp) -> None:
    """Every stream and connection of `app` ended, its limits released."""
    from tests.support.waiting import eventually

    state = app.state

    def nothing_open() -> bool:
        return not state.hub.queues and state.limiter.total == 0

    await eventually(nothing_open, timeout_s=TIMEOUT_S, what="every stream ended")
