"""`notify relay` processes killed mid-batch, Redis and PostgreSQL taken
away: every row reaches its patient's history once, in id order per patient
(`assert_each_row_once_in_order` says why the history is the record)."""

from __future__ import annotations

import time
from collections.abc import Iterator

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


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own that keeps every acknowledged write across a kill -9
    (AOF, fsync always), so history survives the outage being tested."""
    server = RedisServer(extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    server.start()
    yield server
    server.stop(kill=True)


def test_relay_killed_mid_batch_and_restarted_delivers_every_row_once_in_order(
    make_settings: SettingsFactory, outbox_dsn: str, redis_server: RedisServer
) -> None:
    total = insert_many(outbox_dsn, patients=50, per_patient=60)
    settings = make_settings(
        outbox_dsn=outbox_dsn, outbox_batch_size=500, outbox_publish_concurrency=2
    )
    history_keys = [f"{settings.key_prefix}history:{{pt_{p}}}" for p in range(50)]

    def in_history() -> int:
        with redis_server.client() as client:
            pipe = client.pipeline(transaction=False)
            for key in history_keys:
                pipe.xlen(key)
            return sum(pipe.execute())

    relay = RelayProcess(settings)
    relay.start()
    try:
        # Mid-batch: events are in Redis that the table does not show as
        # published yet (the batch's transaction has not committed). The kill
        # can land just after a commit (the window between the check and the
        # signal); then the relay is restarted and killed again on a later
        # batch, which the recovery must survive as well.
        for _attempt in range(5):
            wait_until(
                lambda: in_history() > pending_and_published(outbox_dsn)[1] + 50,
                60,
                "a batch half published",
                interval_s=0.005,
            )
            relay.kill()
            pending, published = pending_and_published(outbox_dsn)
            assert pending > 0, "every row was committed before a kill landed mid-batch"
            if in_history() > published:
                break
            relay.start()
        else:
            raise AssertionError("no kill landed mid-batch in 5 tries")
        relay.start()
        wait_until(
            lambda: pending_and_published(outbox_dsn) == (0, total), 120, "every row published"
        )
    finally:
        relay.stop()
    assert_each_row_once_in_order(redis_server, settings.key_prefix, 50, 60)


def test_redis_away_for_5_s_then_postgres_restarted_loses_nothing(
    make_settings: SettingsFactory,
    durable_redis: RedisServer,
    own_postgres: PostgresServer,
) -> None:
    dsn = fresh_database(own_postgres)
    settings = make_settings(
        outbox_dsn=dsn,
        redis_url=durable_redis.url,
        outbox_batch_size=50,
        outbox_poll_interval_s=0.2,
    )
    relay = RelayProcess(settings)
    relay.start()
    try:
        first = insert_many(dsn, patients=40, per_patient=10, prefix="pa")
        wait_until(lambda: pending_and_published(dsn)[1] > 0, 30, "publishing under way")
        durable_redis.stop(kill=True)
        wait_until(lambda: not relay.ready(), 30, "the relay to say Redis is away")
        # Rows keep coming while Redis is away; they wait in the table.
        second = insert_many(dsn, patients=40, per_patient=10, prefix="pb")
        time.sleep(5)  # the outage itself: Redis stays down for 5 s
        assert pending_and_published(dsn)[0] > 0
        durable_redis.start()
        wait_until(relay.ready, 60, "the relay to recover after Redis came back")
        failures = relay.metric('notify_outbox_failures_total{reason="redis_unavailable"}')
        assert failures > 0
        wait_until(lambda: pending_and_published(dsn) == (0, first + second), 120, "caught up")
        # Now PostgreSQL: a backlog, then a restart while the relay works on it.
        third = insert_many(dsn, patients=40, per_patient=40, prefix="pc")
        wait_until(lambda: pending_and_published(dsn)[0] < third, 30, "the backlog started")
        own_postgres.restart()
        wait_until(
            lambda: pending_and_published(dsn) == (0, first + second + third),
            120,
            "caught up after the PostgreSQL restart",
        )
        assert relay.metric('notify_outbox_failures_total{reason="database_unavailable"}') > 0
        wait_until(relay.ready, 30, "ready again")
    finally:
        relay.stop()
    assert_each_row_once_in_order(durable_redis, settings.key_prefix, 40, 10, "pa")
    assert_each_row_once_in_order(durable_redis, settings.key_prefix, 40, 10, "pb")
    assert_each_row_once_in_order(durable_redis, settings.key_prefix, 40, 40, "pc")
