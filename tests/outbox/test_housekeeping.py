"""The relay's housekeeping on a real table: published rows deleted after the
retention period in small batches (pending and recent rows kept), and the
backlog gauges."""

from __future__ import annotations

import json
from collections.abc import Sequence

import psycopg

from service import metrics
from service.failures import DomainError
from service.outbox.publishing import RoundItem
from service.outbox.relay import OutboxRelay, RelayConfig
from tests.support.outbox import numbered_event


async def never_publish(items: Sequence[RoundItem]) -> list[str | DomainError]:
    raise AssertionError("housekeeping never publishes")


async def test_cleanup_deletes_old_published_rows_in_batches_and_keeps_the_rest(
    outbox_dsn: str,
) -> None:
    relay = OutboxRelay(
        dsn=outbox_dsn,
        publish=never_publish,
        config=RelayConfig(retention_s=3600, cleanup_batch=4),
    )
    async with await psycopg.AsyncConnection.connect(outbox_dsn, autocommit=True) as conn:
        for seq in range(15):
            await conn.execute(
                "INSERT INTO notify_outbox (event) VALUES (%s::jsonb)",
                (json.dumps(numbered_event("pt_c", seq)),),
            )
        # 10 published two hours ago, 3 published just now, 2 still pending.
        await conn.execute(
            "UPDATE notify_outbox SET published_at = now() - interval '2 hours', "
            "published_id = '1-0' WHERE id IN (SELECT id FROM notify_outbox ORDER BY id LIMIT 10)"
        )
        await conn.execute(
            "UPDATE notify_outbox SET published_at = now(), published_id = '2-0' "
            "WHERE id IN (SELECT id FROM notify_outbox WHERE published_at IS NULL "
            "ORDER BY id LIMIT 3)"
        )
        cursor = await conn.execute("SELECT id FROM notify_outbox ORDER BY id")
        ids = [row[0] for row in await cursor.fetchall()]

        assert await relay.cleanup(conn) == 10

        cursor = await conn.execute("SELECT id FROM notify_outbox ORDER BY id")
        assert [row[0] for row in await cursor.fetchall()] == ids[10:]
        count, age = await relay.refresh_backlog(conn)
    assert count == 2
    assert age > 0
    assert metrics.OUTBOX_BACKLOG._value.get() == 2
    assert metrics.OUTBOX_OLDEST_AGE._value.get() == age


async def test_an_empty_backlog_reports_zero_age(outbox_dsn: str) -> None:
    relay = OutboxRelay(dsn=outbox_dsn, publish=never_publish)
    async with await psycopg.AsyncConnection.connect(outbox_dsn, autocommit=True) as conn:
        assert await relay.refresh_backlog(conn) == (0, 0.0)
        assert await relay.cleanup(conn) == 0
