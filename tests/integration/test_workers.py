"""`NOTIFY_WORKERS=2` under a real `notify serve`: each worker listens on a socket
of its own (not one shared by all), the kernel hands connects to both, and SIGTERM
still drains every stream with a reconnect hint."""

from __future__ import annotations

import asyncio
import selectors
import socket
import time

import pytest

from tests.conftest import SettingsFactory, Tokens
from tests.support.app_server import ServiceProcess
from tests.support.procsockets import child_pids, connections_by_process, listeners_by_process
from tests.support.waiting import eventually

pytestmark = pytest.mark.own_topology  # the sockets are below Redis: one topology is enough

STREAMS = 200
ME = "/v1/patients/me/events"


def open_streams(port: int, tokens: list[str]) -> tuple[list[socket.socket], list[bytes]]:
    """One SSE request per token on its own connection; each socket once its
    response head has arrived, and the heads."""
    socks: list[socket.socket] = []
    heads: list[bytes] = []
    try:
        for token in tokens:
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            socks.append(sock)
            sock.sendall(
                f"GET {ME} HTTP/1.1\r\nHost: notify\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
            )
        for sock in socks:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
            heads.append(head)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks, heads


def read_until_closed(socks: list[socket.socket], timeout_s: float) -> list[bytes]:
    """Everything each socket receives until the server closes it."""
    received = {sock: bytearray() for sock in socks}
    open_ = set(socks)
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while open_ and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                data = ready.recv(65536)
                if data:
                    received[ready] += data
                else:
                    open_.discard(ready)
                    selector.unregister(ready)
    return [bytes(received[sock]) for sock in socks]


async def test_each_worker_accepts_on_its_own_socket_and_drains_on_sigterm(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    grace = 3.0
    proc = ServiceProcess(make_settings(workers=2, shutdown_grace_s=grace))
    await asyncio.to_thread(proc.start)
    socks: list[socket.socket] = []
    try:
        assert proc.proc is not None
        parent = proc.proc.pid
        workers: dict[int, set[int]] = {}

        def both_listening() -> bool:
            nonlocal workers
            listening = listeners_by_process(child_pids(parent), proc.port)
            workers = {pid: inodes for pid, inodes in listening.items() if inodes}
            return len(workers) == 2

        await eventually(both_listening, timeout_s=20, what="two workers listening")
        # One socket each, not one socket shared by both (uvicorn's own mode).
        first, second = workers.values()
        assert len(first) == len(second) == 1
        assert first.isdisjoint(second)
        # The parent only holds the address; it accepts nothing.
        assert listeners_by_process([parent], proc.port) == {parent: set()}

        patient_tokens = [tokens.patient(f"pt_{i}") for i in range(STREAMS)]
        socks, heads = await asyncio.to_thread(open_streams, proc.port, patient_tokens)
        assert all(head.startswith(b"HTTP/1.1 200 ") for head in heads)
        spread = connections_by_process(list(workers), proc.port)
        assert sum(spread.values()) == STREAMS
        # The kernel hashes each connect to one socket: both get a fair share
        # (a binomial(200, 1/2) below 50 has a probability under 1e-12).
        assert min(spread.values()) >= STREAMS // 4, spread

        proc.terminate()
        received = await asyncio.to_thread(read_until_closed, socks, grace + 10)
        drained = [data for data in received if b"event: reconnect" in data]
        assert len(drained) == STREAMS, f"{STREAMS - len(drained)} streams got no reconnect hint"
        code = await asyncio.to_thread(proc.wait, grace + 10)
        assert code in (0, -15)
    finally:
        for sock in socks:
            sock.close()
        await asyncio.to_thread(proc.stop)
