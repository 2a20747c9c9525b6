"""`notify outbox migrate`: creates (or brings up to date) the outbox tables from
`schema.sql`, the same file teams with their own migrations can ship."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import psycopg

# One migration at a time, whatever the number of pods starting at once
# (`CREATE TABLE IF NOT EXISTS` races with itself otherwise).
_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(1852798054, 0)"


def schema_sql() -> str:
    return files("service.outbox").joinpath("schema.sql").read_text(encoding="utf-8")


def migrate(dsn: str, *, connect_timeout_s: int = 10) -> None:
    """Apply `schema.sql` in one transaction; idempotent."""
    with psycopg.connect(dsn, connect_timeout=connect_timeout_s) as conn:
        migrate_on(conn)


def migrate_on(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute(_MIGRATION_LOCK)
        # One simple-query call: the file holds several statements and functions.
        conn.execute(schema_sql().encode(), prepare=False)
