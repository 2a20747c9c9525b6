"""``python -m bench outbox``: the PostgreSQL outbox relay (issue 22), in one run.

1. Throughput: ``--rows`` rows over ``--patients`` patients committed in one
   transaction while the relays wait (ready, listening); rows/s from that COMMIT
   until the table has nothing pending, through one ``notify relay`` process and
   then two (a fresh database and Redis keys each time). Every patient's history
   is then checked: each row once, in order (the run fails otherwise).
2. Latency: one ``notify serve`` with ``--clients`` SSE streams (one patient each)
   and one relay; a writer commits one row per transaction at ``--rate`` rows/s
   for ``--seconds``; the time from issuing COMMIT to the event arriving in the
   patient's stream, p50/p99/max.

Its own Redis and PostgreSQL (Debian's server binaries in a temporary directory,
as the tests do). Writes the markdown table to stdout and bench/results/.

    python -m bench outbox
    python -m bench outbox --rows 50000 --patients 2000 --rate 500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench import procstat, report
from service.config import Settings
from service.outbox.schema import migrate
from tests.support.app_server import ServiceProcess
from tests.support.outbox import history_sequences, numbered_event
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer, wait_until
from tests.support.relay_process import RelayProcess
from tests.support.tokens import Tokens, bearer
from tests.support.waiting import eventually


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def new_database(server: PostgresServer) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with server.connect(autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = server.dsn.rsplit("/", 1)[0] + f"/{name}"
    migrate(dsn)
    return dsn


def settings_for(redis: RedisServer, dsn: str, prefix: str, **extra: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        env="test",
        redis_url=redis.url,
        outbox_dsn=dsn,
        key_prefix=prefix,
        log_level="warning",
        log_format="json",
        **extra,
    )


def throughput(
    redis: RedisServer, pg: PostgresServer, relays: int, rows: int, patients: int, workdir: Path
) -> dict[str, Any]:
    dsn = new_database(pg)
    prefix = f"bo{relays}{uuid.uuid4().hex[:6]}:"
    settings = settings_for(redis, dsn, prefix)
    per_patient = rows // patients
    procs = [
        RelayProcess(settings, log_path=str(workdir / f"relay-{relays}-{i}.log"))
        for i in range(relays)
    ]
    for proc in procs:
        proc.start()
    try:
        with psycopg.connect(dsn) as conn:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO notify_outbox (event) VALUES (%s::jsonb)",
                    [
                        (json.dumps(numbered_event(f"pt_{p}", seq)),)
                        for seq in range(per_patient)
                        for p in range(patients)
                    ],
                )
                log(f"   {relays} relay(s): {per_patient * patients} rows inserted, committing")
                cpu_before = sum(procstat.cpu_s(proc.pid) for proc in procs)
                started = time.perf_counter()
            with psycopg.connect(dsn, autocommit=True) as poll:

                def drained() -> bool:
                    row = poll.execute(
                        "SELECT NOT EXISTS (SELECT 1 FROM notify_outbox WHERE published_at IS NULL)"
                    ).fetchone()
                    return row is not None and bool(row[0])

                wait_until(drained, 600, "the relays to drain", 0.01)
            elapsed = time.perf_counter() - started
        cpu_s = sum(procstat.cpu_s(proc.pid) for proc in procs) - cpu_before
        shares = [proc.metric("notify_outbox_published_total") for proc in procs]
    finally:
        for proc in procs:
            proc.stop()
    total = per_patient * patients
    with redis.client() as client:
        wrong = [
            p
            for p in range(patients)
            if history_sequences(client, prefix, f"pt_{p}") != list(range(per_patient))
        ]
    return {
        "relays": relays,
        "rows": total,
        "patients": patients,
        "seconds": round(elapsed, 3),
        "rows_per_s": round(total / elapsed),
        # Load-independent: the relays' own CPU per 1,000 rows (the machine is shared).
        "relay_cpu_ms_per_1000_rows": round(cpu_s * 1e6 / total),
        "published_per_relay": shares,
        "patients_out_of_order_or_duplicated": len(wrong),
    }


async def read_arrivals(
    http: httpx.AsyncClient, token: str, arrivals: dict[int, float], opened: asyncio.Event
) -> None:
    """One patient's SSE stream: the arrival time of each event, by its sequence."""
    async with http.stream(
        "GET", "/v1/patients/me/events", headers=bearer(token), timeout=None
    ) as response:
        async for line in response.aiter_lines():
            opened.set()
            if line.startswith("data: "):
                body = json.loads(line[6:])
                if "appointment_id" in body:
                    arrivals[int(body["appointment_id"].removeprefix("ap_"))] = time.perf_counter()


async def latency(
    redis: RedisServer,
    pg: PostgresServer,
    clients: int,
    rate: float,
    seconds: float,
    workdir: Path,
) -> dict[str, Any]:
    dsn = new_database(pg)
    prefix = f"bl{uuid.uuid4().hex[:6]}:"
    settings = settings_for(redis, dsn, prefix)
    service = ServiceProcess(settings, log_path=str(workdir / "serve.log"))
    relay = RelayProcess(settings, log_path=str(workdir / "relay-latency.log"))
    await asyncio.to_thread(service.start)
    await asyncio.to_thread(relay.start)
    tokens = Tokens()
    committed: dict[tuple[int, int], float] = {}
    arrivals: list[dict[int, float]] = [{} for _ in range(clients)]
    total = int(rate * seconds)
    readers: list[asyncio.Task[None]] = []
    try:
        limits = httpx.Limits(max_connections=clients + 10)
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30, limits=limits) as http:
            for p in range(clients):
                opened = asyncio.Event()
                readers.append(
                    asyncio.create_task(
                        read_arrivals(http, tokens.patient(f"pt_{p}"), arrivals[p], opened)
                    )
                )
                await asyncio.wait_for(opened.wait(), 30)
            log(f"   {clients} SSE streams open; writing {total} rows at {rate}/s")
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                start = time.perf_counter()
                for i in range(total):
                    p, seq = i % clients, i // clients
                    delay = start + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await conn.execute("BEGIN")
                    await conn.execute(
                        "INSERT INTO notify_outbox (event) VALUES (%s::jsonb)",
                        (json.dumps(numbered_event(f"pt_{p}", seq)),),
                    )
                    committed[(p, seq)] = time.perf_counter()
                    await conn.execute("COMMIT")
            # Whatever has not arrived after 2 minutes is reported as undelivered.
            with contextlib.suppress(AssertionError):
                await eventually(lambda: sum(map(len, arrivals)) >= total, timeout_s=120)
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    finally:
        await asyncio.to_thread(relay.stop)
        await asyncio.to_thread(service.stop)
    ms = sorted(
        (arrivals[p][seq] - at) * 1000 for (p, seq), at in committed.items() if seq in arrivals[p]
    )
    return {
        "clients": clients,
        "rate_rows_per_s": rate,
        "seconds": seconds,
        "events": total,
        "delivered": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 1),
        "max_ms": round(ms[-1], 1),
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Outbox relay (issue 22)",
        "",
        f"Run {result['when']}; {result['machine'].get('cpu', '?')}, "
        f"{os.cpu_count()} cores (shared: other work runs on this machine).",
        "",
        "| relays | rows | patients | seconds | rows/s | relay CPU per 1,000 rows | published per relay | wrong patients |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["throughput"]:
        lines.append(
            f"| {row['relays']} | {row['rows']:,} | {row['patients']:,} | {row['seconds']} | "
            f"**{row['rows_per_s']:,}** | {row['relay_cpu_ms_per_1000_rows']} ms | {', '.join(str(int(s)) for s in row['published_per_relay'])} | "
            f"{row['patients_out_of_order_or_duplicated']} |"
        )
    lat = result["latency"]
    lines += [
        "",
        "| COMMIT → SSE client | clients | rate | delivered | p50 | p99 | max |",
        "|---|---|---|---|---|---|---|",
        f"| one relay, LISTEN/NOTIFY | {lat['clients']} | {lat['rate_rows_per_s']}/s | "
        f"{lat['delivered']}/{lat['events']} | **{lat['p50_ms']} ms** | **{lat['p99_ms']} ms** | {lat['max_ms']} ms |",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench outbox", description=__doc__)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=100, help="SSE streams for the latency run")
    ap.add_argument("--rate", type=float, default=200.0, help="rows/s for the latency run")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-outbox-"))
    log(f"bench outbox: logs in {workdir}")
    redis = RedisServer()
    pg = PostgresServer()
    redis.start()
    pg.start()
    try:
        result: dict[str, Any] = {
            "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "machine": report.machine(),
            "command": "python -m bench outbox " + " ".join(argv),
            "throughput": [],
        }
        for relays in (1, 2):
            log(f"== throughput, {relays} relay(s)")
            result["throughput"].append(throughput(redis, pg, relays, a.rows, a.patients, workdir))
        log("== latency")
        result["latency"] = asyncio.run(latency(redis, pg, a.clients, a.rate, a.seconds, workdir))
    finally:
        pg.remove()
        redis.stop(kill=True)
    md = render(result)
    print(md)
    if not a.no_write:
        base = os.path.join(a.out, f"{time.strftime('%Y%m%d-%H%M%S')}-outbox")
        Path(base + ".md").write_text(md)
        Path(base + ".json").write_text(json.dumps(result, indent=1, default=str))
        Path(a.out, "latest-outbox.md").write_text(md)
        log(f"bench: wrote {base}.md")
    ok = all(r["patients_out_of_order_or_duplicated"] == 0 for r in result["throughput"])
    ok = ok and result["latency"]["delivered"] == result["latency"]["events"]
    return 0 if ok else 1
