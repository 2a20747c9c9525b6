"""Measure the memory one open stream costs a `notify serve` process.

The pod's memory request/limit (deploy/k8s/deployment.yaml) is sized from this:
baseline RSS + NOTIFY_MAX_CONNECTIONS x per-stream cost, plus headroom.

    python deploy/measure_stream_memory.py --streams 2000

It starts `notify serve` on a free loopback port (memory broker, a throwaway
token key), reads the process' RSS, opens the streams (half SSE, half WebSocket by default,
each with its own patient so no per-subject limit applies), publishes one event to
each so that every delivery path has been exercised, reads the RSS again, and
prints the difference per stream. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect

from service.services.principal import Role
from service.services.tokens import mint_token

# A throwaway HS256 key for the measured process (NOTIFY_ENV=development).
SECRET = secrets.token_urlsafe(32)


def token(sub: str, role: Role = Role.PATIENT, scopes: tuple[str, ...] = ()) -> str:
    return mint_token(
        secret=SECRET, sub=sub, audience="notify", issuer="notify-dev", role=role, scopes=scopes
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def settle(pid: int) -> int:
    """RSS once it stops moving (the allocator and the GC have caught up)."""
    last = rss_kib(pid)
    for _ in range(20):
        await asyncio.sleep(0.5)
        now = rss_kib(pid)
        if abs(now - last) < 256:
            return now
        last = now
    return last


async def open_sse(
    client: httpx.AsyncClient, url: str, sub: str, opened: asyncio.Event, got_event: asyncio.Event
) -> None:
    headers = {"Authorization": f"Bearer {token(sub)}"}
    async with client.stream("GET", url, headers=headers) as response:
        async for line in response.aiter_lines():
            if line.startswith("retry:"):
                opened.set()
            if line.startswith("event: appointment."):
                got_event.set()


async def open_ws(url: str, sub: str) -> ClientConnection:
    ws = await connect(url, additional_headers={"Authorization": f"Bearer {token(sub)}"})
    await ws.send(json.dumps({"type": "subscribe"}))
    while json.loads(await ws.recv()).get("type") != "subscribed":
        pass
    return ws


async def measure(
    proc: subprocess.Popen[bytes], port: int, streams: int, ws_fraction: float
) -> None:
    base = f"http://127.0.0.1:{port}"
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    tasks: list[asyncio.Task[None]] = []
    sockets: list[ClientConnection] = []
    try:
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{base}/health/ready")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("notify serve did not become ready")
                await asyncio.sleep(0.1)
            # Warm up: one stream of each kind, so code paths and caches are loaded.
            opened, got = asyncio.Event(), asyncio.Event()
            warm = asyncio.create_task(
                open_sse(client, f"{base}/v1/patients/me/events", "pt_warm", opened, got)
            )
            await asyncio.wait_for(opened.wait(), 10)
            if ws_fraction > 0:
                sockets.append(await open_ws(f"ws://127.0.0.1:{port}/v1/ws", "pt_warmws"))
            baseline = await settle(proc.pid)

            half = streams - int(streams * ws_fraction)
            events = []
            for i in range(half):
                opened, got = asyncio.Event(), asyncio.Event()
                events.append((opened, got))
                tasks.append(
                    asyncio.create_task(
                        open_sse(client, f"{base}/v1/patients/me/events", f"pt_m{i}", opened, got)
                    )
                )
            await asyncio.wait_for(asyncio.gather(*(o.wait() for o, _ in events)), 120)
            for i in range(streams - half):
                sockets.append(await open_ws(f"ws://127.0.0.1:{port}/v1/ws", f"pt_w{i}"))
            publisher = token("svc_measure", Role.SERVICE, ("events:publish",))
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            for i in range(half):
                body = {
                    "type": "appointment.updated",
                    "patient_id": f"pt_m{i}",
                    "appointment_id": "ap_1",
                    "occurred_at": now,
                    "data": {},
                }
                response = await client.post(
                    f"{base}/v1/events", json=body, headers={"Authorization": f"Bearer {publisher}"}
                )
                response.raise_for_status()
            await asyncio.wait_for(asyncio.gather(*(g.wait() for _, g in events)), 120)
            loaded = await settle(proc.pid)
            per_stream = (loaded - baseline) / streams
            print(f"streams={streams} (SSE {half}, WebSocket {streams - half})")
            print(f"baseline RSS {baseline / 1024:.1f} MiB, with streams {loaded / 1024:.1f} MiB")
            print(f"{per_stream:.1f} KiB per open stream")
            warm.cancel()
    finally:
        for task in tasks:
            task.cancel()
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument(
        "--ws-fraction",
        type=float,
        default=0.5,
        help="share of the streams opened as WebSockets (0 = SSE only)",
    )
    args = parser.parse_args()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    env.update(
        {
            "NOTIFY_ENV": "development",
            "NOTIFY_REDIS_URL": "memory://",
            "NOTIFY_PORT": str(port),
            "NOTIFY_LOG_LEVEL": "warning",
            "NOTIFY_JWT_SECRET": SECRET,
            "NOTIFY_MAX_CONNECTIONS": str(args.streams + 100),
        }
    )
    notify = str(Path(sys.executable).with_name("notify"))
    proc = subprocess.Popen([notify, "serve"], env=env, stdout=subprocess.DEVNULL)
    try:
        asyncio.run(measure(proc, port, args.streams, args.ws_fraction))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
