"""A held WebSocket keeps none of FastAPI's routing, and under `notify serve` no
task, no uvicorn protocol and no scope either (issue 23).

The route checks the handshake's credentials and accepts; the session then runs
from the edge middleware once routing has returned (`service/middleware.py:
defer_stream`, `service/transports/ws.py:WsSession`). While sockets are held (both
ways in: credentials at the handshake, and an `auth` first frame), no routing
coroutine of FastAPI or Starlette, no dependency exit stack, no route coroutine of
ours and no Starlette `WebSocket` may be alive for them. The collector is off, so
whatever a reference cycle keeps shows up too.

Once admitted, the socket belongs to its stream (`service/transports/ws_stream.py:
WsStream`, the transport's protocol): no task of the server's (uvicorn's session
task, a reader, a writer) and no uvicorn WebSocket protocol or ASGI scope may be
alive for it, while it still answers, and still ends.
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
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import ClientConnection, connect

from service.config import Settings
from service.routers import ws as ws_router
from service.transports.ws_stream import WsStream
from tests.conftest import SettingsFactory, Tokens
from tests.support.app_server import RunningApp, run_app
from tests.support.collector import collector_off
from tests.support.raw_clients import TIMEOUT_S, all_ended, open_ws_subscribed, send_and_wait
from tests.support.waiting import eventually

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


async def answered_then_closed(app: RunningApp, held: list[ClientConnection]) -> None:
    """Each held socket answers a ping, then a close (1000); the server ends all."""
    for conn in held:
        await conn.send(json.dumps({"type": "ping", "id": "p"}))
    async with asyncio.timeout(TIMEOUT_S):
        for conn in held:
            while json.loads(await conn.recv())["type"] != "pong":
                pass
    await asyncio.gather(*(conn.close() for conn in held))
    assert {conn.close_code for conn in held} == {1000}
    await all_ended(app)


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
            await answered_then_closed(app, held)


def server_tasks() -> list[str]:
    """Tasks running the service's or uvicorn's code (not the test's clients', nor
    the broker's: a subscription's first one of a shard starts that shard's reader)."""
    names = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        filename = code.co_filename if code is not None else ""
        if ("/service/" in filename or "/uvicorn/" in filename) and "/brokers/" not in filename:
            names.append(f"{Path(filename).name}:{code.co_qualname if code else '?'}")
    return names


def held_per_socket() -> Counter[str]:
    """uvicorn WebSocket protocols, WebSocket scopes and streams alive."""
    alive: Counter[str] = Counter()
    for obj in gc.get_objects():
        # By type: `isinstance` on a dead weak proxy raises `ReferenceError`.
        kind = type(obj)
        if issubclass(kind, WebSocketsSansIOProtocol):
            alive["uvicorn protocol"] += 1
        elif kind is WsStream:
            alive["stream"] += 1
        elif kind is dict and obj.get("type") == "websocket" and "path" in obj:
            alive["scope"] += 1
    return alive


async def test_held_websockets_keep_no_task_no_uvicorn_protocol_and_no_scope(
    held_settings: Settings, tokens: Tokens
) -> None:
    with collector_off():
        async with run_app(held_settings) as app:
            tasks_before = sorted(server_tasks())
            token = tokens.patient("pt_held")
            held = [await open_ws_subscribed(app, token) for _ in range(HELD)]
            held += [await open_first_frame_auth(app, token) for _ in range(HELD)]
            assert app.state.limiter.total == 2 * HELD
            # The sessions' tasks return once their streams own the sockets (the
            # hand-over, then the access line wait for the streams' ends).
            await eventually(
                lambda: sorted(server_tasks()) == tasks_before,
                timeout_s=TIMEOUT_S,
                what=f"no task for {2 * HELD} held WebSockets",
            )
            alive = held_per_socket()
            assert alive == Counter({"stream": 2 * HELD}), dict(alive)
            # Live without a task: pings answered, closes answered.
            await answered_then_closed(app, held)
            await eventually(
                lambda: held_per_socket()["stream"] == 0,
                timeout_s=TIMEOUT_S,
                what="the streams freed by reference counting",
            )
