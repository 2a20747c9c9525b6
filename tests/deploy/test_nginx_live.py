"""The shipped nginx config in a real nginx, in front of a real `notify serve`:
events stream through it one by one (a buffering + gzip config, the negative
control, delivers them in one burst), WebSocket upgrades work, and no query-string
ticket reaches nginx's logs."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .conftest import Nginx, NotifyServer, SpawnNginx, SpawnNotify, event_body, poll
from .live import (
    Observation,
    apoll,
    apublish,
    bearer,
    open_streams,
    read_sse,
    recv_json,
    streaming_problems,
)

pytestmark = pytest.mark.slow

EVENTS = 4
GAP_S = 0.6
# Like a browser: it accepts gzip, so nginx would compress if it were allowed to.
BROWSER_HEADERS = {"Accept": "text/event-stream", "Accept-Encoding": "gzip, deflate"}
# The negative control: what the PITFALLS warn about, on the SSE location.
BUFFERED_AND_GZIPPED = {
    ("/v1/patients/",): {
        "proxy_buffering": ["on"],
        # The service sends `X-Accel-Buffering: no`, which nginx obeys: ignore it, as
        # an outer proxy that doesn't know the header would.
        "proxy_ignore_headers": ["X-Accel-Buffering"],
        "gzip": ["on"],
        "gzip_types": ["text/event-stream"],
    }
}


async def observe_stream(
    proxy_url: str, server: NotifyServer, *, end_by_sigterm: bool = False
) -> Observation:
    """Open an SSE stream through `proxy_url`, publish EVENTS events GAP_S apart and
    note when each arrives. The stream resumes after a first event (Last-Event-ID),
    so no event is lost however late the subscription is confirmed."""
    patient = f"pt_{uuid.uuid4().hex[:12]}"
    obs = Observation()
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client:
        first = await apublish(client, server, event_body(patient, "ap_0"))
        before = await open_streams(client, server, "sse")
        headers = {**BROWSER_HEADERS, **bearer(patient), "Last-Event-ID": first["id"]}

        async def read() -> None:
            async with client.stream(
                "GET", f"{proxy_url}/v1/patients/me/events", headers=headers
            ) as response:
                await read_sse(response, obs, lambda o: len(o.arrivals()) >= EVENTS)

        reader = asyncio.create_task(read())

        async def opened() -> bool:
            return await open_streams(client, server, "sse") > before

        await apoll(opened, 10, "the service to hold the stream open")
        for n in range(EVENTS):
            published_at = time.monotonic()
            stored = await apublish(client, server, event_body(patient, f"ap_{n + 1}"))
            obs.published.append((published_at, stored["id"]))
            await asyncio.sleep(GAP_S)  # the pace of the publisher, not a wait for readiness
        if end_by_sigterm:
            server.terminate()
        await asyncio.wait_for(reader, timeout=20)
    return obs


async def test_events_stream_through_nginx_one_by_one(
    nginx: Nginx, notify_server: NotifyServer
) -> None:
    obs = await observe_stream(nginx.base_url, notify_server)

    assert obs.status == 200
    assert obs.headers["content-type"].startswith("text/event-stream")
    assert "content-encoding" not in obs.headers, "an event stream must not be compressed"
    assert obs.headers.get("server") == "nginx", "server_tokens off: no version"
    assert streaming_problems(obs, GAP_S) == []


async def test_negative_control_buffering_and_gzip_deliver_one_burst(
    spawn_notify: SpawnNotify, spawn_nginx: SpawnNginx
) -> None:
    """The same check fails when nginx buffers and gzips the stream: the test can fail."""
    # Started in a thread: their readiness polling must not block the event loop.
    server = await asyncio.to_thread(spawn_notify)
    proxy = await asyncio.to_thread(spawn_nginx, server.port, BUFFERED_AND_GZIPPED)

    obs = await observe_stream(proxy.base_url, server, end_by_sigterm=True)

    assert obs.headers.get("content-encoding") == "gzip"
    problems = streaming_problems(obs, GAP_S)
    assert len(obs.arrivals()) >= EVENTS, "every event arrives, only late"
    assert any("one burst" in p for p in problems), problems


async def test_websocket_upgrade_through_nginx(nginx: Nginx, notify_server: NotifyServer) -> None:
    patient = f"pt_{uuid.uuid4().hex[:12]}"
    async with (
        connect(f"{nginx.ws_url}/v1/ws", additional_headers=bearer(patient), open_timeout=10) as ws,
        httpx.AsyncClient(timeout=10) as client,
    ):
        assert ws.response is not None
        assert ws.response.status_code == 101
        await ws.send(json.dumps({"type": "subscribe"}))
        await recv_json(ws, "subscribed")
        stored = await apublish(client, notify_server, event_body(patient, "ap_ws"))
        message = await recv_json(ws, "event")
        assert message["event"]["appointment_id"] == "ap_ws"
        assert message["event"]["id"] == stored["id"]


async def test_websocket_needs_the_upgrade_headers(
    spawn_nginx: SpawnNginx, notify_server: NotifyServer
) -> None:
    """Negative control: without the Upgrade/Connection headers (hop-by-hop, nginx
    never forwards them by itself) the handshake through nginx fails."""
    no_upgrade = {("=", "/v1/ws"): {"proxy_set_header": ["Connection", '""']}}
    proxy = await asyncio.to_thread(spawn_nginx, notify_server.port, no_upgrade)
    patient = f"pt_{uuid.uuid4().hex[:12]}"
    with pytest.raises(InvalidStatus):
        await connect(f"{proxy.ws_url}/v1/ws", additional_headers=bearer(patient), open_timeout=5)


async def test_query_string_tickets_stay_out_of_the_logs(
    nginx: Nginx, notify_server: NotifyServer
) -> None:
    """Browsers pass stream tickets in the URL: nginx's log must drop query strings."""
    patient = f"pt_{uuid.uuid4().hex[:12]}"
    bogus = f"tkt{uuid.uuid4().hex}"
    async with httpx.AsyncClient(timeout=10) as client:
        issued = await client.post(f"{nginx.base_url}/v1/stream-tickets", headers=bearer(patient))
        assert issued.status_code == 201, issued.text
        ticket = issued.json()["ticket"]
        obs = Observation()
        async with client.stream(
            "GET",
            f"{nginx.base_url}/v1/patients/me/events",
            params={"ticket": ticket, "last_event_id": "1-0"},
            headers=BROWSER_HEADERS,
        ) as response:
            await read_sse(response, obs, lambda o: bool(o.frames))
        assert obs.status == 200, "the ticket opened the stream"
        refused = await client.get(
            f"{nginx.base_url}/v1/patients/me/events", params={"ticket": bogus}
        )
        assert refused.status_code == 401
    async with connect(f"{nginx.ws_url}/v1/ws?ticket={ticket}", open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "subscribe"}))
        await recv_json(ws, "subscribed")

    def logged() -> bool:
        paths = [json.loads(line)["path"] for line in nginx.access_lines()]
        return paths.count("/v1/patients/me/events") >= 2 and "/v1/ws" in paths

    await asyncio.to_thread(poll, logged, 10, "nginx to log the three requests")
    logs = {
        "nginx access log": nginx.access_log.read_text(),
        "nginx error log": nginx.error_log.read_text(),
        "service log": notify_server.log(),
    }
    for name, text in logs.items():
        assert ticket not in text, f"the ticket is in the {name}"
        assert bogus not in text, f"the refused ticket is in the {name}"
    for line in nginx.access_lines():
        record = json.loads(line)  # one JSON object per line
        assert "?" not in record["path"]
