"""A closed connection is freed by reference counting alone.

With the cyclic collector switched off, a few hundred SSE and WebSocket
connections are opened through the real app (uvicorn in this loop, real Redis)
and ended every way a stream can end: the client closes, the client resets the
TCP connection, the client is too slow, the token expires, the subject is
revoked, the server drains for shutdown. Afterwards no per-connection object of
ours may still be alive: any that is was kept by a reference cycle (which only a
full collection would free, and `NOTIFY_GC_TUNING` makes those rare) or by a
reference nobody released.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from starlette.requests import Request
from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from service.config import Settings
from service.fanout.clock import SendWatch
from service.fanout.connection import SseConnection
from service.fanout.queue import DeliveryQueue
from service.fanout.subscription import Subscription
from service.fanout.ws_connection import WsConnection
from service.transports.hand_over import DisconnectHook
from service.transports.http_protocol import HttpProtocol
from service.transports.sse_response import SseStreamResponse
from service.transports.ws_protocol import WsProtocol
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import RunningApp, run_app
from tests.support.collector import collector_off
from tests.support.raw_clients import (
    TIMEOUT_S,
    RawSSE,
    all_ended,
    burst,
    open_ws_subscribed,
    wait_ws_closed,
    ws_reset,
)
from tests.support.waiting import eventually

# One connection's objects, server side. Counted by exact type after the churn.
PER_CONNECTION_TYPES: tuple[type, ...] = (
    DeliveryQueue,
    Subscription,
    SseConnection,
    WsConnection,
    SseStreamResponse,
    SendWatch,
    WebSocket,
    Request,
    HttpProtocol,
    WebSocketsSansIOProtocol,
    WsProtocol,
    DisconnectHook,
)
# Connections per transport and ending: 6 endings x 2 transports x 20 = 240.
PER_GROUP = 20


def live_instances() -> Counter[str]:
    """Instances of `PER_CONNECTION_TYPES` alive now. With the collector off since
    before the app started, every object created since is still in generation 0:
    listing only that one keeps the walk short."""
    wanted = set(PER_CONNECTION_TYPES)
    return Counter(type(o).__qualname__ for o in gc.get_objects(0) if type(o) in wanted)


async def nothing_left(what: str) -> None:
    """Wait for references still being dropped by unwinding handlers; what a cycle
    holds never goes (the collector is off)."""
    left: Counter[str] = Counter()

    def none_alive() -> bool:
        left.clear()
        left.update(live_instances())
        return not left

    try:
        await eventually(none_alive, timeout_s=10, what=what, interval_s=0.2)
    except AssertionError:
        raise AssertionError(f"alive {what}: {dict(left)}") from None


async def gather(count: int, make: Callable[[int], Awaitable[None]]) -> None:
    await asyncio.gather(*(make(i) for i in range(count)))


@pytest.fixture
def churn_settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(
        client_queue_max=2,
        max_connections_per_subject=1000,
        shutdown_grace_s=4.0,
        shutdown_jitter_fraction=0.2,
    )


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[RunningApp]:
    async with run_app(settings) as app:
        yield app


async def churn_until_revoked_or_closed(app: RunningApp, tokens: Tokens) -> None:
    # 1. The client closes politely.
    async def sse_clean(_: int) -> None:
        stream = await RawSSE.open(app, tokens.patient("pt_clean"))
        await stream.close()

    async def ws_clean(_: int) -> None:
        conn = await open_ws_subscribed(app, tokens.patient("pt_clean"))
        await conn.close()

    await gather(PER_GROUP, sse_clean)
    await gather(PER_GROUP, ws_clean)

    # 2. The client resets the TCP connection.
    async def sse_reset(_: int) -> None:
        stream = await RawSSE.open(app, tokens.patient("pt_reset"))
        await stream.reset()

    async def ws_reset_one(_: int) -> None:
        conn = await open_ws_subscribed(app, tokens.patient("pt_reset"))
        await ws_reset(conn)

    await gather(PER_GROUP, sse_reset)
    await gather(PER_GROUP, ws_reset_one)
    await all_ended(app)

    # 3. Too slow: more events at once than the queue holds.
    sse_slow = [await RawSSE.open(app, tokens.patient("pt_slow")) for _ in range(PER_GROUP)]
    ws_slow = [await open_ws_subscribed(app, tokens.patient("pt_slow")) for _ in range(PER_GROUP)]
    burst(app, "pt_slow", 5)
    for stream in sse_slow:
        assert b'"reason": "too_slow"' in await stream.read_to_end()
        await stream.close()
    codes = [await wait_ws_closed(conn) for conn in ws_slow]
    assert codes == [4008] * PER_GROUP
    await all_ended(app)

    # 4. The token expires. Its lifetime must outlast opening all 40 streams, which
    # took over 3 s on a loaded machine (a token already expired gets a 401).
    short = tokens.patient("pt_expiring", ttl_s=10)
    sse_expiring = await asyncio.gather(*(RawSSE.open(app, short) for _ in range(PER_GROUP)))
    ws_expiring = await asyncio.gather(*(open_ws_subscribed(app, short) for _ in range(PER_GROUP)))
    for stream in sse_expiring:
        assert b'"reason": "token_expired"' in await stream.read_to_end()
        await stream.close()
    codes = [await wait_ws_closed(conn) for conn in ws_expiring]
    assert codes == [4001] * PER_GROUP
    await all_ended(app)

    # 5. The subject is revoked.
    revoked = tokens.patient("pt_revoked")
    sse_revoked = [await RawSSE.open(app, revoked) for _ in range(PER_GROUP)]
    ws_revoked = [await open_ws_subscribed(app, revoked) for _ in range(PER_GROUP)]
    until = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    async with httpx.AsyncClient(base_url=app.base_url, timeout=TIMEOUT_S) as http:
        answer = await http.post(
            "/v1/revocations",
            json={"sub": "pt_revoked", "until": until},
            headers=bearer(tokens.admin()),
        )
        assert answer.status_code == 201, answer.text
    for stream in sse_revoked:
        assert b'"reason": "revoked"' in await stream.read_to_end()
        await stream.close()
    codes = [await wait_ws_closed(conn) for conn in ws_revoked]
    assert codes == [4003] * PER_GROUP
    await all_ended(app)


async def test_ended_connections_leave_nothing_behind(
    churn_settings: Settings, tokens: Tokens
) -> None:
    with collector_off():
        async with serving(churn_settings) as app:
            await churn_until_revoked_or_closed(app, tokens)
            # 6. The server drains for shutdown.
            sse_drained = [
                await RawSSE.open(app, tokens.patient("pt_drain")) for _ in range(PER_GROUP)
            ]
            ws_drained = [
                await open_ws_subscribed(app, tokens.patient("pt_drain")) for _ in range(PER_GROUP)
            ]
            app.state.begin_drain()
            for stream in sse_drained:
                assert b'"reason": "shutdown"' in await stream.read_to_end()
                await stream.close()
            codes = [await wait_ws_closed(conn) for conn in ws_drained]
            assert codes == [1001] * PER_GROUP
            await all_ended(app)
            # Nothing of a connection is needed once it ended, even while serving.
            await nothing_left("after every connection ended")
        await nothing_left("after the server stopped")
