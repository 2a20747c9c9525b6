"""The uvicorn settings the proxies are configured around really come from NOTIFY_
variables through `notify serve` (not uvicorn's own defaults)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from service.cli import LISTEN_BACKLOG

from .conftest import SpawnNotify
from .live import bearer

pytestmark = pytest.mark.slow


async def read_http_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


async def test_keepalive_timeout_comes_from_notify_settings(spawn_notify: SpawnNotify) -> None:
    # 1 s instead of uvicorn's default 5 s: the idle connection closes after ~1 s.
    server = await asyncio.to_thread(spawn_notify, NOTIFY_KEEPALIVE_TIMEOUT_S="1")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: notify\r\n\r\n")
        await writer.drain()
        status, headers = await read_http_head(reader)
        assert status == 200
        await reader.readexactly(int(headers["content-length"]))
        idle_from = time.monotonic()
        assert await asyncio.wait_for(reader.read(1), 10) == b"", "server closed it"
        idle = time.monotonic() - idle_from
    finally:
        writer.close()
    assert 0.5 <= idle < 3.5, f"closed after {idle:.2f} s of idleness"


async def test_websocket_ping_interval_comes_from_notify_settings(
    spawn_notify: SpawnNotify,
) -> None:
    server = await asyncio.to_thread(spawn_notify, NOTIFY_WS_PING_INTERVAL_S="0.5")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    auth = bearer(f"pt_{uuid.uuid4().hex[:12]}")["Authorization"]
    try:
        writer.write(
            (
                "GET /v1/ws HTTP/1.1\r\nHost: notify\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Authorization: {auth}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        status, _ = await read_http_head(reader)
        assert status == 101

        async def first_ping() -> float:
            opened = time.monotonic()
            while True:
                first, second = await reader.readexactly(2)
                length = second & 0x7F
                if length == 126:
                    length = int.from_bytes(await reader.readexactly(2), "big")
                elif length == 127:
                    length = int.from_bytes(await reader.readexactly(8), "big")
                await reader.readexactly(length)
                if first & 0x0F == 0x9:  # a protocol ping from the server
                    return time.monotonic() - opened

        waited = await asyncio.wait_for(first_ping(), 5)
    finally:
        writer.close()
    # uvicorn's default interval is 20 s: a ping this early is our setting.
    assert waited < 2.5


def listen_backlog(port: int) -> int | None:
    """The backlog of the socket listening on `port` (`ss`' Send-Q), None without ss."""
    ss = shutil.which("ss")
    if ss is None:
        return None
    fields = subprocess.run(
        [ss, "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    # State, Recv-Q, Send-Q (a listening socket's backlog), local address, peer.
    return int(fields[2])


async def test_the_listen_queue_holds_a_restart_storm(spawn_notify: SpawnNotify) -> None:
    # uvicorn's default backlog (2048) overflowed with 5,000 clients reconnecting
    # after a restart (issue 15): the kernel gets ours, capped by somaxconn.
    server = await asyncio.to_thread(spawn_notify)
    backlog = await asyncio.to_thread(listen_backlog, server.port)
    if backlog is None:
        pytest.skip("iproute2's ss is needed to read a listening socket's backlog")
    somaxconn = int(await asyncio.to_thread(Path("/proc/sys/net/core/somaxconn").read_text))
    assert backlog == min(LISTEN_BACKLOG, somaxconn)
