"""The shipped alert rules and dashboard against a real Prometheus scraping a real
`notify serve` with the test's own Redis.

The rules are loaded as shipped except for their `for:` durations, which
`fast_rules` sets to 2 s (minutes would make a test of minutes; every threshold,
expression, label and annotation is the shipped one).

Which program exports each metric is listed in tests/deploy/prometheus.py
(`METRICS`): the dashboard's queries on the outbox relay's and kube-state-metrics'
metrics run here too, but only notify serve's metrics are required to be there (the
relay's are, by test_prometheus_relay_live.py; kube-state-metrics' by nobody here)."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import httpx
import pytest
from notify_publisher.keys import RedisKeys

from tests.support.redis_server import RedisServer

from .conftest import NotifyServer, mint, poll
from .prometheus import (
    METRICS,
    SERVE,
    family,
    fast_rules,
    metric_names,
)
from .prometheus_server import PrometheusServer
from .test_grafana_dashboard import expressions, load

pytestmark = pytest.mark.slow

FAST_FOR_S = 2
FAST_FOR = f"{FAST_FOR_S}s"
# Grafana's variables as "All" selects them, and a rate window over several scrapes.
GRAFANA_VARIABLES = {"$namespace": ".*", "$pod": ".*", "$__rate_interval": "1m"}


@dataclass
class Stack:
    redis: RedisServer
    notify: NotifyServer
    prometheus: PrometheusServer


@contextlib.contextmanager
def running_stack(workdir: Path) -> Iterator[Stack]:
    """Redis, notify serve on it, and Prometheus scraping it with the fast rules."""
    redis = RedisServer()
    redis.start()
    notify = NotifyServer(workdir, NOTIFY_REDIS_URL=redis.url)
    prometheus: PrometheusServer | None = None
    try:
        notify.start()
        rules = fast_rules(workdir / "notify-rules.yaml", FAST_FOR)
        prometheus = PrometheusServer(f"127.0.0.1:{notify.port}", rules).start()
        yield Stack(redis, notify, prometheus)
    finally:
        if prometheus is not None:
            prometheus.stop()
        notify.stop()
        redis.stop(kill=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Shared by the tests that leave it healthy (the Redis test restarts Redis)."""
    with running_stack(tmp_path_factory.mktemp("prometheus-live")) as shared:
        yield shared


def listener_up(stack: Stack) -> bool:
    result = stack.prometheus.query("notify_listener_up")
    return bool(result) and result[0]["value"][1] == "1"


def has_data(stack: Stack, expr: str) -> bool:
    return bool(stack.prometheus.query(expr))


def evaluated_after(stack: Stack, moment: float) -> bool:
    """Whether every rule group has been evaluated since `moment` (Unix time)."""
    for group in stack.prometheus.api("rules")["groups"]:
        stamp = re.sub(r"(\.\d{6})\d*", r"\1", group["lastEvaluation"]).replace("Z", "+00:00")
        if datetime.fromisoformat(stamp).timestamp() <= moment:
            return False
    return True


def test_a_healthy_service_fires_no_alert(stack: Stack) -> None:
    """The shipped thresholds against real, healthy numbers: nothing pending, nothing
    firing (a rule that misreads a metric would show here)."""
    poll(lambda: listener_up(stack), 30, "prometheus to scrape a connected listener")
    # Past the (shortened) `for:` of anything that became true since, twice over.
    settled = time.time() + 2 * FAST_FOR_S
    poll(lambda: evaluated_after(stack, settled), 30, "the rules to be evaluated again")
    active = stack.prometheus.api("alerts")["alerts"]
    assert active == [], [(a["labels"]["alertname"], a["state"]) for a in active]


def test_redis_alert_fires_when_redis_dies_and_resolves_when_it_returns(stack: Stack) -> None:
    name = "NotifyRedisListenerDown"
    poll(lambda: listener_up(stack), 30, "prometheus to scrape a connected listener")
    assert stack.prometheus.alert_rule(name)["state"] == "inactive"

    stack.redis.stop(kill=True)
    try:
        poll(lambda: bool(stack.prometheus.firing(name)), 30, f"{name} to fire")
        (firing,) = stack.prometheus.firing(name)
        assert firing["labels"]["severity"] == "critical"
        assert firing["annotations"]["runbook_url"].endswith("runbook.md#notifyredislistenerdown")
        # Readiness agrees: the pod would be out of the load balancer.
        ready = httpx.get(f"{stack.notify.base_url}/health/ready", timeout=5)
        assert ready.status_code == 503
    finally:
        stack.redis.start()

    poll(
        lambda: stack.prometheus.alert_rule(name)["state"] == "inactive",
        30,
        f"{name} to return to inactive",
    )
    assert not stack.prometheus.firing(name)
    assert listener_up(stack)


def test_every_dashboard_query_runs_and_names_only_exported_metrics(stack: Stack) -> None:
    # Auth refusals (open-ended reasons) exist from the first one: cause one.
    refused = httpx.get(f"{stack.notify.base_url}/v1/patients/me/events", timeout=5)
    assert refused.status_code == 401
    templating = [v["definition"] for v in load()["templating"]["list"] if v["type"] == "query"]
    queries = expressions()
    wanted = {
        series
        for expr in [*queries, *templating]
        for series in metric_names(re.sub(r"label_values\((\w+).*", r"\1", expr))
        if METRICS[family(series)].source == SERVE
    }
    assert "notify_open_streams" in wanted

    def all_scraped() -> bool:
        return wanted <= stack.prometheus.metric_names()

    poll(lambda: listener_up(stack), 30, "prometheus to scrape a connected listener")
    try:
        poll(all_scraped, 30, "every metric of the dashboard in prometheus")
    except AssertionError:
        missing = wanted - stack.prometheus.metric_names()
        raise AssertionError(f"notify serve does not export {sorted(missing)}") from None

    for expr in queries:
        concrete = expr
        for variable, value in GRAFANA_VARIABLES.items():
            concrete = concrete.replace(variable, value)
        assert "$" not in concrete, expr
        stack.prometheus.query(concrete)  # fails on a PromQL error
        if {METRICS[family(s)].source for s in metric_names(expr)} == {SERVE}:
            # Every series exists from the start, so no panel of the service stays
            # empty (rate() needs two scrapes of a series: a new one takes a second).
            poll(partial(has_data, stack, concrete), 15, f"data for {concrete}")


def test_the_first_dropped_event_fires_its_alert(tmp_path: Path) -> None:
    """One invalid event published raw on a patient's channel: the counter's series
    existed at 0 before it, so increase() sees the drop and the alert fires (a series
    born at 1 would show no increase, and the alert would never fire)."""
    name = "NotifyEventsDroppedInvalid"
    patient = "pt_prometheus_live"
    # Its own stack: the alert stays firing for the rule's 10-minute window.
    with running_stack(tmp_path) as own, own.redis.client() as redis:
        poll(lambda: listener_up(own), 30, "prometheus to scrape a connected listener")
        channel = RedisKeys("notify:").patient_channel(patient)
        headers = {"Authorization": f"Bearer {mint(patient)}"}
        url = f"{own.notify.base_url}/v1/patients/me/events"
        with httpx.stream("GET", url, headers=headers, timeout=10) as response:
            assert response.status_code == 200

            def subscribed() -> bool:
                counts = dict(redis.pubsub_numsub(channel))
                return bool(counts.get(channel.encode()))

            poll(subscribed, 10, "the service to subscribe to the patient's channel")
            # Scraped with the stream open, before the drop.
            open_sse = 'notify_open_streams{transport="sse"} == 1'
            poll(partial(has_data, own, open_sse), 10, "a scrape of the open stream")
            assert not own.prometheus.firing(name)
            assert redis.publish(channel, b'{"type": "appointment.unknown"}') == 1
            poll(lambda: bool(own.prometheus.firing(name)), 30, f"{name} to fire")
        (firing,) = own.prometheus.firing(name)
        assert firing["labels"]["severity"] == "warning"
        assert patient not in str(firing)  # no patient id in labels or annotations
