"""SIGTERM, as Kubernetes sends it after the preStop sleep: `notify serve` with open
SSE and WebSocket clients tells each to reconnect and exits within its grace."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .conftest import SpawnNotify
from .live import Observation, bearer, read_sse, recv_json

pytestmark = pytest.mark.slow

GRACE_S = 4.0
# Process teardown after the drain: lifespan shutdown, interpreter exit.
EXIT_SLACK_S = 1.5


async def test_sigterm_drains_open_streams_within_the_grace(spawn_notify: SpawnNotify) -> None:
    server = await asyncio.to_thread(spawn_notify, NOTIFY_SHUTDOWN_GRACE_S=str(GRACE_S))
    assert server.proc is not None
    observations = [Observation(), Observation()]
    sockets: list[ClientConnection] = []

    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=GRACE_S + 10)) as client:
        opened = [asyncio.Event() for _ in observations]

        async def read(n: int) -> None:
            headers = bearer(f"pt_{uuid.uuid4().hex[:12]}")
            async with client.stream(
                "GET", f"{server.base_url}/v1/patients/me/events", headers=headers
            ) as response:

                def stop(obs: Observation) -> bool:
                    if obs.frames:
                        opened[n].set()
                    return False  # read to the end of the stream

                await read_sse(response, observations[n], stop)

        readers = [asyncio.create_task(read(n)) for n in range(len(observations))]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), 10)
        for _ in range(2):
            ws = await connect(
                f"{server.ws_url}/v1/ws",
                additional_headers=bearer(f"pt_{uuid.uuid4().hex[:12]}"),
                open_timeout=10,
            )
            sockets.append(ws)
            await ws.send(json.dumps({"type": "subscribe"}))
            await recv_json(ws, "subscribed")

        async def ws_messages(ws: ClientConnection) -> list[dict[str, object]]:
            """Every message until the server closes (a receive loop, as clients must)."""
            received: list[dict[str, object]] = []
            try:
                async for raw in ws:
                    received.append(json.loads(raw))
            except ConnectionClosed:
                pass
            return received

        ws_readers = [asyncio.create_task(ws_messages(ws)) for ws in sockets]

        started = time.monotonic()
        server.terminate()
        returncode = await asyncio.to_thread(server.proc.wait, GRACE_S + 15)
        elapsed = time.monotonic() - started
        await asyncio.wait_for(asyncio.gather(*readers), 5)
        ws_received = await asyncio.wait_for(asyncio.gather(*ws_readers), 5)

    # uvicorn re-raises the captured SIGTERM once it has shut down cleanly, so the
    # process ends "killed by SIGTERM" (exit 143 in Kubernetes), like any server.
    assert returncode in (0, -signal.SIGTERM), server.log()
    assert elapsed <= GRACE_S + EXIT_SLACK_S, f"exit took {elapsed:.2f} s, grace {GRACE_S} s"
    for obs in observations:
        assert obs.ended_at is not None, "the stream was ended by the server"
        (hint,) = obs.events("reconnect")
        assert hint.retry is not None, "a (jittered) retry: comes with it"
        assert hint.retry > 0
    for ws, received in zip(sockets, ws_received, strict=True):
        assert any(m.get("type") == "reconnect" for m in received), received
        assert ws.close_code == 1001, ws.close_code
