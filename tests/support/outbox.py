"""Writing outbox rows the way a clinic backend does (plain SQL in its own
transaction), and reading back what reached Redis."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import redis

from tests.support.events import event
from tests.support.redis_server import RedisServer

INSERT = "INSERT INTO notify_outbox (event, idempotency_key) VALUES (%s::jsonb, %s) RETURNING id"


def numbered_event(patient_id: str, seq: int) -> dict[str, Any]:
    """An event whose appointment id carries its per-patient sequence number."""
    return event(patient_id, f"ap_{seq}")


async def insert(
    conn: psycopg.AsyncConnection[Any], body: dict[str, Any], key: str | None = None
) -> int:
    cursor = await conn.execute(INSERT, (json.dumps(body), key))
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def insert_many(dsn: str, patients: int, per_patient: int, *, prefix: str = "pt") -> int:
    """`patients` x `per_patient` rows, interleaved across patients, in transactions
    of a few hundred rows; returns the number of rows."""
    rows = [
        (json.dumps(numbered_event(f"{prefix}_{p}", seq)), None)
        for seq in range(per_patient)
        for p in range(patients)
    ]
    with psycopg.connect(dsn) as conn:
        for start in range(0, len(rows), 500):
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO notify_outbox (event, idempotency_key) VALUES (%s::jsonb, %s)",
                    rows[start : start + 500],
                )
    return len(rows)


def pending_and_published(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE published_at IS NULL), "
            "count(*) FILTER (WHERE published_at IS NOT NULL) FROM notify_outbox"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def history_sequences(client: redis.Redis, key_prefix: str, patient_id: str) -> list[int]:
    """The per-patient sequence numbers in the patient's history stream, in order."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(  # type: ignore[assignment]
        f"{key_prefix}history:{{{patient_id}}}"
    )
    sequences = []
    for _, fields in entries:
        body = json.loads(fields[b"e"])
        sequences.append(int(body["appointment_id"].removeprefix("ap_")))
    return sequences


def assert_each_row_once_in_order(
    server: RedisServer, prefix: str, patients: int, per_patient: int, name: str = "pt"
) -> None:
    """Every patient `<name>_<p>` got its rows 0..per_patient-1 exactly once, in order.

    The patient's history stream is the record of delivery: every event a connected
    client gets went through it (tests/outbox/test_relay.py follows rows to an SSE
    client), and a repeat publish would show up as a second entry."""
    with server.client() as client:
        for p in range(patients):
            sequences = history_sequences(client, prefix, f"{name}_{p}")
            assert sequences == list(range(per_patient)), f"{name}_{p}: {sequences}"
