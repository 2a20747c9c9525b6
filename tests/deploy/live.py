"""Async helpers for the live deploy tests: publishing, polling, and an SSE reader
that notes when each event arrives (to tell a stream from a burst)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection

from tests.support.waiting import eventually

from .conftest import NotifyServer, mint, publisher_token


async def apoll(predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    await eventually(predicate, timeout_s=timeout_s, what=what, interval_s=0.05)


async def apublish(
    client: httpx.AsyncClient, server: NotifyServer, event: dict[str, Any]
) -> dict[str, Any]:
    """Publish through the service's API, straight to uvicorn (not through nginx)."""
    response = await client.post(
        f"{server.base_url}/v1/events",
        json=event,
        headers={"Authorization": f"Bearer {publisher_token()}"},
    )
    assert response.status_code == 201, response.text
    stored: dict[str, Any] = response.json()
    return stored


async def open_streams(client: httpx.AsyncClient, server: NotifyServer, transport: str) -> float:
    text = (await client.get(f"{server.base_url}/metrics")).text
    pattern = rf'^notify_open_streams\{{[^}}]*transport="{transport}"[^}}]*\}} (\S+)$'
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


@dataclass
class SSEFrame:
    at: float
    event: str = "message"
    id: str | None = None
    data: str = ""
    retry: int | None = None
    comment: bool = False


@dataclass
class Observation:
    """What a client saw of one event stream, with arrival times (monotonic)."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    frames: list[SSEFrame] = field(default_factory=list)
    published: list[tuple[float, str]] = field(default_factory=list)
    ended_at: float | None = None

    def arrivals(self) -> dict[str, float]:
        return {f.id: f.at for f in self.frames if f.id and f.event.startswith("appointment.")}

    def events(self, name: str) -> list[SSEFrame]:
        return [f for f in self.frames if f.event == name]


async def read_sse(
    response: httpx.Response, obs: Observation, stop: Callable[[Observation], bool]
) -> None:
    """Parse frames as they arrive until `stop(obs)` or the end of the stream."""
    obs.status = response.status_code
    obs.headers = {k.lower(): v for k, v in response.headers.items()}
    current: SSEFrame | None = None
    async for line in response.aiter_lines():
        now = time.monotonic()
        if line == "":
            if current is not None:
                obs.frames.append(current)
                current = None
                if stop(obs):
                    return
            continue
        current = current or SSEFrame(at=now)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "":
            current.comment = True
        elif name == "event":
            current.event = value
        elif name == "id":
            current.id = value
        elif name == "data":
            current.data += value
        elif name == "retry":
            current.retry = int(value)
    obs.ended_at = time.monotonic()


def streaming_problems(obs: Observation, gap_s: float) -> list[str]:
    """Why these events did not stream: empty when each arrived as it was published."""
    arrivals = obs.arrivals()
    missing = [event_id for _, event_id in obs.published if event_id not in arrivals]
    if missing:
        return [f"{len(missing)} of {len(obs.published)} events never arrived"]
    problems = []
    for n, (published_at, event_id) in enumerate(obs.published):
        lag = arrivals[event_id] - published_at
        if lag > gap_s / 2:
            problems.append(f"event {n} arrived {lag:.2f} s after it was published")
    first, last = obs.published[0][1], obs.published[-1][1]
    spread = arrivals[last] - arrivals[first]
    published_over = obs.published[-1][0] - obs.published[0][0]
    if spread < published_over / 2:
        problems.append(
            f"one burst: arrived within {spread:.2f} s, published over {published_over:.2f} s"
        )
    if obs.ended_at is not None and arrivals[first] >= obs.ended_at - 0.2:
        problems.append("the first event arrived only as the stream ended")
    return problems


async def recv_json(ws: ClientConnection, want_type: str, timeout_s: float = 5) -> dict[str, Any]:
    """The next message of `want_type` (others, e.g. heartbeats, are skipped)."""

    async def next_of_type() -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(await ws.recv())
            if message.get("type") == want_type:
                return message

    return await asyncio.wait_for(next_of_type(), timeout_s)


def bearer(sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(sub)}"}
