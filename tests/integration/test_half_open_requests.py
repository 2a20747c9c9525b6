"""Half-open requests end: 2,000 connections that send one header line and never
finish are closed by a real `notify serve` after `NOTIFY_HEADER_TIMEOUT_S`, and
counted, while an SSE stream on the same process keeps receiving events."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import selectors
import socket
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.transports.http_protocol import REQUEST_TIMEOUT_RESPONSE
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import ServiceProcess, running
from tests.support.events import event_dict
from tests.support.sse import open_sse, opened

pytestmark = pytest.mark.own_topology  # the deadline is below Redis: one topology is enough

HALF_OPEN = 2000
HEADER_TIMEOUT_S = 1.0
TIMER_SLACK_S = 0.01
ME = "/v1/patients/me/events"


def header_timeouts(metrics_text: str, stage: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "notify_header_timeouts_total" and sample.labels == {"stage": stage}:
                return sample.value
    return 0.0


def hold_half_open(port: int, count: int, timeout_s: float) -> list[tuple[bytes, float]]:
    """Open `count` connections that each send a request line and one header, never
    the blank line; return what the server answered on each before it closed it,
    and how long each lived. Blocking sockets in a thread: the test's own event
    loop (debug mode) is too slow to write within the deadline on 2,000 of them."""
    answers: dict[socket.socket, bytearray] = {}
    started: dict[socket.socket, float] = {}
    lived: dict[socket.socket, float] = {}
    with selectors.DefaultSelector() as selector:
        try:
            for _ in range(count):
                # Before connecting: the server's clock starts when it accepts,
                # which can come before create_connection returns here.
                opened_at = time.monotonic()
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                started[sock] = opened_at
                sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: notify\r\n")
                sock.setblocking(False)
                answers[sock] = bytearray()
                selector.register(sock, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout_s
            while len(lived) < count and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=1):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    data = ready.recv(4096)
                    if data:
                        answers[ready] += data
                    else:
                        lived[ready] = time.monotonic() - started[ready]
                        selector.unregister(ready)
        finally:
            for sock in answers:
                sock.close()
    return [(bytes(answers[sock]), lived.get(sock, -1.0)) for sock in answers]


async def test_half_open_requests_are_closed_while_streams_flow(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    settings = make_settings(header_timeout_s=HEADER_TIMEOUT_S)
    async with (
        running(ServiceProcess(settings)) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=10) as http,
        open_sse(http, ME, headers=bearer(tokens.patient("pt_1"))) as stream,
    ):
        await opened(stream)
        before = header_timeouts((await http.get("/metrics")).text, "in_headers")

        published: list[str] = []
        done = asyncio.Event()

        async def publish_until_done() -> None:
            # Events keep flowing for as long as the half-open connections exist.
            while not done.is_set():
                response = await http.post(
                    "/v1/events",
                    json=event_dict("pt_1", f"ap_{len(published)}"),
                    headers=bearer(tokens.service()),
                )
                assert response.status_code == 201
                published.append(response.json()["id"])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.1)

        publisher = asyncio.create_task(publish_until_done())
        try:
            outcomes = await asyncio.to_thread(hold_half_open, server.port, HALF_OPEN, 60)
        finally:
            done.set()
            await publisher

        answers = collections.Counter(answer for answer, _ in outcomes)
        assert answers == {REQUEST_TIMEOUT_RESPONSE: HALF_OPEN}
        # None closed before the deadline (the server's clock starts after the client's;
        # uvloop's timers count from the loop's cached time, in whole milliseconds,
        # so one can fire up to a millisecond early: 0.9997 s was seen).
        assert min(lived for _, lived in outcomes) >= HEADER_TIMEOUT_S - TIMER_SLACK_S
        after = header_timeouts((await http.get("/metrics")).text, "in_headers")
        assert after - before == HALF_OPEN

        # The stream received every event published meanwhile, in order.
        assert len(published) >= 3
        frames = await stream.wait_events(len(published), timeout_s=15)
        assert [f.id for f in frames] == published
        assert (await http.get("/health/ready")).status_code == 200
