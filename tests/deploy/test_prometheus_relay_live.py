"""The outbox alerts against a real Prometheus scraping a real `notify relay` (with
real PostgreSQL and the test's own Redis): the relay exports the metrics the
dashboard's outbox panels use, and a row that cannot be published fires
NotifyOutboxBacklogOld until Redis returns. The rules are the shipped ones with
their `for:` shortened (tests/deploy/prometheus.py, `fast_rules`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from service.config import Settings
from tests.outbox.conftest import fresh_database
from tests.support.events import event
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer
from tests.support.relay_process import RelayProcess

from .conftest import poll
from .prometheus import METRICS, RELAY, fast_rules
from .prometheus_server import PrometheusServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ALERT = "NotifyOutboxBacklogOld"
# A row committed this long ago and still pending: past the alert's 2 minutes.
ROW_AGE = "10 minutes"


@dataclass
class RelayStack:
    dsn: str
    redis: RedisServer
    relay: RelayProcess
    prometheus: PrometheusServer


@pytest.fixture
def relay_stack(tmp_path: Path) -> Iterator[RelayStack]:
    postgres = PostgresServer()
    redis = RedisServer()
    relay: RelayProcess | None = None
    prometheus: PrometheusServer | None = None
    try:
        postgres.start()
        redis.start()
        dsn = fresh_database(postgres)
        settings = Settings(
            _env_file=None,
            env="test",
            redis_url=redis.url,
            outbox_dsn=dsn,
            log_format="json",
            gc_tuning=False,
        )
        relay = RelayProcess(settings, log_path=str(tmp_path / "relay.log"))
        relay.start()
        rules = fast_rules(tmp_path / "notify-rules.yaml", "2s")
        prometheus = PrometheusServer(f"127.0.0.1:{relay.port}", rules).start()
        yield RelayStack(dsn, redis, relay, prometheus)
    finally:
        if prometheus is not None:
            prometheus.stop()
        if relay is not None:
            relay.stop()
        redis.stop(kill=True)
        postgres.remove()


def insert_old_row(dsn: str) -> None:
    """A row the clinic's backend committed `ROW_AGE` ago."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO notify_outbox (event, created_at) "
            "VALUES (%s::jsonb, clock_timestamp() - %s::interval)",
            (json.dumps(event("pt_relay_live", "ap_1")), ROW_AGE),
        )


def test_a_stuck_outbox_row_fires_the_backlog_alert_until_redis_returns(
    relay_stack: RelayStack,
) -> None:
    prometheus = relay_stack.prometheus
    scraped = "notify_outbox_oldest_pending_age_seconds"
    poll(lambda: bool(prometheus.query(scraped)), 30, "prometheus to scrape the relay")
    assert prometheus.alert_rule(ALERT)["state"] == "inactive"

    relay_stack.redis.stop(kill=True)
    try:
        insert_old_row(relay_stack.dsn)
        poll(lambda: bool(prometheus.firing(ALERT)), 60, f"{ALERT} to fire")
        (firing,) = prometheus.firing(ALERT)
        assert firing["labels"]["severity"] == "critical"
        assert "pt_relay_live" not in json.dumps(firing)
        # Every relay metric the dashboard and the rules name is exported (failures
        # appear with the first one, which the dead Redis has caused by now).
        relay_metrics = {name for name, metric in METRICS.items() if metric.source == RELAY}
        poll(
            lambda: relay_metrics <= prometheus.metric_names(),
            30,
            "every outbox metric in prometheus",
        )
    finally:
        relay_stack.redis.start()

    poll(
        lambda: prometheus.alert_rule(ALERT)["state"] == "inactive",
        90,
        f"{ALERT} to return to inactive once the row is published",
    )
