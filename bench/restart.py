"""Restart storm: N SSE clients, a real SIGTERM, events published while the service
is down, the service started again; do the clients get what they missed?

    python -m bench restart                    # 5,000 clients, both variants
    python -m bench restart --clients 10000 --variants holding

The clients behave as browsers' EventSource does (HTML spec, "server-sent
events"): one connection each, an `id:` field sets the last event id when its
block is dispatched (an id-only block included, without dispatching an event),
`retry:` sets the reconnection delay, and when the stream ends or the
connection fails they reconnect to the same URL after that delay with
`Last-Event-ID` (none if they have no id). They never give up (EventSource gives
up on a non-200 answer; this service answers its retry-able refusals with 200).

Variants:
- `fresh`: the clients have received no event before the restart (issue 12: they
  resume from the id-only head block the service sends after `retry:`).
- `holding`: each client received one event first, so it holds that event's id.

Measured per variant: missed events delivered / published (one per client), duplicates,
and the time from the new process answering `/health/ready` until every client has
its missed event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench import peers
from bench.worker import mint_token

SSE_PATH = "/v1/patients/me/events"
# Short reconnect delays and drain window keep the run short; the README's
# defaults (3 s retry, 25 s grace) only stretch the same timeline.
SERVICE_ENV = {
    "NOTIFY_SSE_RETRY_MS": "1000",
    "NOTIFY_SHUTDOWN_GRACE_S": "6",
    "NOTIFY_HISTORY_MAXLEN": "100",
}
TARGET_S = {5000: 1.5, 10000: 3.0}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Client:
    """One EventSource, as the HTML spec describes it."""

    patient: str
    token: str
    port: int
    last_event_id: str = ""
    retry_s: float = 3.0
    received: list[str] = field(default_factory=list)
    connects: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    open_now: bool = False
    # The stream's first block arrived (`retry:`): the service subscribed it.
    subscribed: bool = False
    got_event: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
                await self._one_connection(stop)
            self.open_now = self.subscribed = False
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry_s)

    async def _one_connection(self, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            headers = [
                f"GET {SSE_PATH} HTTP/1.1",
                f"Host: 127.0.0.1:{self.port}",
                "Accept: text/event-stream",
                "Cache-Control: no-cache",
                f"Authorization: Bearer {self.token}",
            ]
            if self.last_event_id:
                headers.append(f"Last-Event-ID: {self.last_event_id}")
            writer.write(("\r\n".join(headers) + "\r\n\r\n").encode())
            self.connects += 1
            status_line = await reader.readline()
            if not status_line:
                return
            status = int(status_line.split()[1])
            self.statuses[status] = self.statuses.get(status, 0) + 1
            chunked = False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                    chunked = True
            if status != 200:
                return  # EventSource would fail for good; ours never answers so here
            self.open_now = True
            await self._read_stream(reader, chunked, stop)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_stream(
        self, reader: asyncio.StreamReader, chunked: bool, stop: asyncio.Event
    ) -> None:
        buffer = b""
        id_buffer: str | None = None
        data: list[str] = []
        event_type = ""
        while not stop.is_set():
            if chunked:
                size_line = await reader.readline()
                if not size_line:
                    return
                size = int(size_line.strip() or b"0", 16)
                if size == 0:
                    return
                chunk = await reader.readexactly(size + 2)
                buffer += chunk[:-2]
            else:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.rstrip(b"\r").decode()
                if line == "":
                    # Dispatch: the last event id is set first, even for an
                    # id-only block; only a block with data is an event.
                    if id_buffer is not None:
                        self.last_event_id = id_buffer
                    if data and event_type.startswith("appointment."):
                        self.received.append(self.last_event_id)
                        self.got_event.set()
                    data, event_type = [], ""
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "id":
                    id_buffer = value
                elif name == "data":
                    data.append(value)
                elif name == "event":
                    event_type = value
                elif name == "retry" and value.isdigit():
                    self.retry_s = int(value) / 1000
                    self.subscribed = True


async def wait_until(predicate, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def publish_one_each(redis_url: str, patients: list[str]) -> list[str]:
    """One event per patient through the service's own publish path (the code
    behind `POST /v1/events` and `notify publish`), as another instance would."""
    from notify_publisher.events import EventCreate
    from notify_publisher.keys import RedisKeys

    from service.brokers.redis import RedisBroker
    from service.services.publisher import publish

    keys = RedisKeys("notify:")
    broker = RedisBroker.standalone(
        url=redis_url,
        control_channel=keys.control,
        max_connections=64,
        pool_timeout_s=5,
        socket_timeout_s=5,
    )
    semaphore = asyncio.Semaphore(64)

    async def one(patient: str) -> str:
        event = EventCreate.model_validate(
            {
                "type": "appointment.rescheduled",
                "patient_id": patient,
                "appointment_id": "ap_1",
                "occurred_at": "2026-12-01T09:00:00Z",
                "data": {"starts_at": "2026-12-01T14:00:00Z", "ends_at": "2026-12-01T14:30:00Z"},
            }
        )
        async with semaphore:
            published = await publish(
                broker=broker, keys=keys, event=event, history_maxlen=100, history_ttl_s=3600
            )
        stored = published.event
        assert stored.id is not None
        return stored.id

    try:
        return list(await asyncio.gather(*(one(p) for p in patients)))
    finally:
        await broker.stop()


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def start(redis: peers.Redis, workdir: Path, port: int, name: str, workers: int = 1) -> peers.Peer:
    env = {**SERVICE_ENV, "NOTIFY_WORKERS": str(workers)}
    peer = peers.start_ours(
        redis, workdir, heartbeat_s=15, port=port, env_overrides=env, log_name=name
    )
    deadline = time.monotonic() + 30
    while not ready(port):
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not become ready")
        time.sleep(0.02)
    return peer


async def run_variant(
    variant: str, clients_n: int, redis: peers.Redis, workdir: Path, workers: int = 1
) -> dict:
    port = peers.free_port()
    peer = start(redis, workdir, port, f"ours-{variant}-w{workers}-1.log", workers)
    prefix = f"pt_{variant[:1]}{int(time.time()) % 100000}_"
    patients = [f"{prefix}{i}" for i in range(clients_n)]
    clients = [Client(p, mint_token(peers.JWT_SECRET, p), port) for p in patients]
    stop = asyncio.Event()
    tasks = []
    try:
        # Connect in waves, as a fleet of browsers would, not all in one tick.
        for i in range(0, clients_n, 250):
            tasks += [asyncio.create_task(c.run(stop)) for c in clients[i : i + 250]]
            await asyncio.sleep(0.05)
        connected_s = await wait_until(
            lambda: all(c.open_now and c.subscribed for c in clients), 120, "all connected"
        )
        log(f"restart/{variant}: {clients_n} clients connected in {connected_s:.1f} s")
        if variant == "holding":
            await publish_one_each(redis.url, patients)
            await wait_until(lambda: all(c.received for c in clients), 60, "first events")
        before = {c.patient: len(c.received) for c in clients}
        # A real SIGTERM to the process; it drains (reconnect hints) and exits.
        sigterm_at = time.monotonic()
        os.killpg(peer.proc.pid, signal.SIGTERM)
        await asyncio.to_thread(peer.proc.wait, 60)
        down_s = time.monotonic() - sigterm_at
        missed = dict(zip(patients, await publish_one_each(redis.url, patients), strict=True))
        log(f"restart/{variant}: down after {down_s:.1f} s; published {len(missed)} while down")
        peer = await asyncio.to_thread(
            start, redis, workdir, port, f"ours-{variant}-w{workers}-2.log", workers
        )
        ready_at = time.monotonic()
        # Who had the CPU during the catch-up: these clients (one process) or the server.
        client_cpu0, server_cpu0 = time.process_time(), peer.cpu_s()

        def caught_up() -> int:
            return sum(1 for c in clients if missed[c.patient] in c.received)

        try:
            await wait_until(lambda: caught_up() == clients_n, 60, "all missed events delivered")
            catch_up_s: float | None = time.monotonic() - ready_at
        except TimeoutError:
            catch_up_s = None
        catch_up_wall = time.monotonic() - ready_at
        client_cpu = time.process_time() - client_cpu0
        server_cpu = peer.cpu_s() - server_cpu0
        delivered = caught_up()
        duplicates = sum(len(c.received) - len(set(c.received)) for c in clients)
        # More than the one missed event after the restart: a replay went too far back.
        extra = sum(1 for c in clients if len(set(c.received)) - before[c.patient] > 1)
        return {
            "variant": variant,
            "workers": workers,
            "clients": clients_n,
            "connect_s": round(connected_s, 2),
            "down_s": round(down_s, 2),
            "published_while_down": len(missed),
            "delivered": delivered,
            "lost": clients_n - delivered,
            "duplicates": duplicates,
            "clients_with_extra_events": extra,
            "catch_up_s": None if catch_up_s is None else round(catch_up_s, 2),
            # Percent of one core over the catch-up (server: its main process).
            "client_cpu_pct": round(100 * client_cpu / max(1e-9, catch_up_wall)),
            "server_cpu_pct": round(100 * server_cpu / max(1e-9, catch_up_wall)),
            "target_s": TARGET_S.get(clients_n),
        }
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        peer.stop()


def render(results: list[dict]) -> str:
    lines = [
        "| variant | clients | published while down | delivered | lost | duplicates "
        "| new process ready → all caught up (s) | target (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        catch_up = "not within 60" if r["catch_up_s"] is None else f"{r['catch_up_s']:.2f}"
        lines.append(
            f"| {r['variant']} | {r['clients']:,} | {r['published_while_down']:,} "
            f"| {r['delivered']:,} | {r['lost']:,} | {r['duplicates']:,} | {catch_up} "
            f"| {r['target_s'] if r['target_s'] is not None else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench restart", description=__doc__)
    ap.add_argument("--clients", type=int, default=5000)
    ap.add_argument("--variants", default="fresh,holding")
    a = ap.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = peers.make_workdir()
    redis = peers.Redis(workdir)
    results = []
    try:
        for variant in a.variants.split(","):
            results.append(asyncio.run(run_variant(variant, a.clients, redis, workdir)))
            log(json.dumps(results[-1]))
    finally:
        redis.stop()
    table = render(results)
    print(table)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = peers.REPO / "bench" / "results" / f"{stamp}-restart-{a.clients}.md"
    out.write_text(
        f"# Restart storm, {a.clients:,} SSE clients\n\n"
        f"`python -m bench restart --clients {a.clients}` (settings: "
        f"{', '.join(f'{k}={v}' for k, v in SERVICE_ENV.items())})\n\n{table}\n"
    )
    (out.with_suffix(".json")).write_text(json.dumps(results, indent=2))
    log(f"bench: wrote {out}")
    clean = all(
        r["lost"] == 0 and r["duplicates"] == 0 and r["clients_with_extra_events"] == 0
        for r in results
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
