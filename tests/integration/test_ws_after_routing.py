"""A held WebSocket keeps none of FastAPI's routing (issue 23).

The route checks the handshake's credentials and accepts; the session then runs
from the edge middleware once routing has returned (`service/middleware.py:
defer_stream`, `service/transports/ws.py:WsSession`). While sockets are held (both
ways in: credentials at the handshake, and an `auth` first frame), no routing
coroutine of FastAPI or Starlette, no dependency exit stack, no route coroutine of
ours and no Starlette `WebSocket` may be alive for them. The collector is off, so
whatever a reference cycle keeps shows up too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections import Counter
from pathlib import Path
from types import CoroutineType

import fastapi
import pytest
import starlette
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect

from service.config import Settings
from service.routers import ws as ws_router
from tests.conftest import SettingsFactory, Tokens
from tests.support.app_server import RunningApp, run_app
from tests.support.collector import collector_off
from tests.support.raw_clients import TIMEOUT_S, all_ended, open_ws_subscribed, send_and_wait

HELD = 20
_STARLETTE = Path(starlette.__file__).parent
_FASTAPI = Path(fastapi.__file__).parent
# Where the per-request machinery of routing lives: the router and its routes,
# dependency solving, the exception wrappers inside the middleware stack, our route.
# (The application's own `__call__` and the outermost error middleware wrap every
# request, SSE bodies and WebSocket sessions included, and are not routing.)
ROUTING_FILES = frozenset(
    str(path)
    for path in (
        _FASTAPI / "routing.py",
        _FASTAPI / "dependencies" / "utils.py",
        _STARLETTE / "routing.py",
        _STARLETTE / "_exception_handler.py",
        _STARLETTE / "middleware" / "exceptions.py",
        Path(ws_router.__file__),
    )
)


def routing_alive() -> Counter[str]:
    """Routing's coroutines not finished yet, exit stacks and Starlette
    `WebSocket`s, by name."""
    alive: Counter[str] = Counter()
    for obj in gc.get_objects():
        if isinstance(obj, CoroutineType):
            code = obj.cr_code
            if obj.cr_frame is not None and code.co_filename in ROUTING_FILES:
                alive[f"coroutine {Path(code.co_filename).name}:{code.co_qualname}"] += 1
        elif type(obj) in (contextlib.AsyncExitStack, WebSocket):
            alive[type(obj).__qualname__] += 1
    return alive


@pytest.fixture
def held_settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(max_connections_per_subject=1000)


async def open_first_frame_auth(app: RunningApp, token: str) -> ClientConnection:
    conn = await connect(f"{app.ws_url}/v1/ws", proxy=None)
    await send_and_wait(conn, {"type": "auth", "token": token}, "authenticated")
    await send_and_wait(conn, {"type": "subscribe"}, "subscribed")
    return conn


async def test_held_websockets_keep_no_routing(held_settings: Settings, tokens: Tokens) -> None:
    with collector_off():
        async with run_app(held_settings) as app:
            before = routing_alive()
            token = tokens.patient("pt_held")
            held = [await open_ws_subscribed(app, token) for _ in range(HELD)]
            held += [await open_first_frame_auth(app, token) for _ in range(HELD)]
            assert app.state.limiter.total == 2 * HELD
            kept = routing_alive() - before
            assert not kept, f"{2 * HELD} held WebSockets keep routing alive: {dict(kept)}"
            # The sessions are live: a ping on each is answered.
            for conn in held:
                await conn.send(json.dumps({"type": "ping", "id": "p"}))
            async with asyncio.timeout(TIMEOUT_S):
                for conn in held:
                    while json.loads(await conn.recv())["type"] != "pong":
                        pass
            await asyncio.gather(*(conn.close() for conn in held))
            assert {conn.close_code for conn in held} == {1000}
            await all_ended(app)
