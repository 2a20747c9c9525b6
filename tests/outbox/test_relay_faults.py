"""Two `notify relay` processes on one table, against real PostgreSQL and Redis:
every row reaches its patient's history once, in id order per patient
(`assert_each_row_once_in_order` says why the history is the record)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import SettingsFactory
from tests.outbox.conftest import fresh_database
from tests.support.outbox import (
    assert_each_row_once_in_order,
    insert_many,
    pending_and_published,
)
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer, wait_until
from tests.support.relay_process import RelayProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_two_relays_share_10000_rows_over_500_patients_each_once_in_order(
    make_settings: SettingsFactory, outbox_dsn: str, redis_server: RedisServer
) -> None:
    total = insert_many(outbox_dsn, patients=500, per_patient=20)
    assert total == 10_000
    settings = make_settings(outbox_dsn=outbox_dsn, outbox_batch_size=200)
    relays = [RelayProcess(settings), RelayProcess(settings)]
    try:
        for relay in relays:
            relay.start()
        wait_until(
            lambda: pending_and_published(outbox_dsn) == (0, total), 240, "every row published"
        )
        published = [relay.metric("notify_outbox_published_total") for relay in relays]
    finally:
        for relay in relays:
            relay.stop()
    # Both relays worked, and no row was marked twice.
    assert all(count > 0 for count in published), published
    assert sum(published) == total
    assert_each_row_once_in_order(redis_server, settings.key_prefix, 500, 20)


def test_relay_waits_for_postgresql_and_says_so(
    make_settings: SettingsFactory,
    redis_server: RedisServer,
    own_postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    """Started while its database is down: alive, not ready, logging its retries
    (without the DSN's password); ready and relaying once the database is back."""
    dsn = fresh_database(own_postgres)
    own_postgres.stop()
    secret_dsn = dsn.replace("postgres@", "postgres:s3cret-pw@")
    log_path = tmp_path / "relay.log"
    relay = RelayProcess(make_settings(outbox_dsn=secret_dsn), log_path=str(log_path))
    relay.start(wait_ready=False)
    try:
        wait_until(relay.live, 30, "the relay's liveness probe")
        ready = httpx.get(f"{relay.base_url}/health/ready", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["database"] == "unreachable"
        wait_until(
            lambda: log_path.read_text().count("outbox_database_unavailable") >= 2,
            30,
            "retries in the log",
        )
        assert relay.metric('notify_outbox_failures_total{reason="database_unavailable"}') >= 2
        own_postgres.start()
        wait_until(relay.ready, 30, "ready once PostgreSQL is back")
        total = insert_many(dsn, patients=3, per_patient=5)
        wait_until(lambda: pending_and_published(dsn) == (0, total), 30, "rows relayed")
    finally:
        relay.stop()
    text = log_path.read_text()
    assert "s3cret-pw" not in text
    assert_each_row_once_in_order(redis_server, relay.settings.key_prefix, 3, 5)
