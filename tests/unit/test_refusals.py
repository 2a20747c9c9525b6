"""Every error reply Redis can give the publish path maps to a named cause, a
retry-able 503 with `Retry-After` and that cause as `code`, counted by cause.

The exceptions are built by redis-py's own reply parser from the reply lines
Redis 7.0 sends (`parse_error` is what every parser, hiredis included, calls for
an error reply), so a change in redis-py's classes shows up here."""

from __future__ import annotations

import json
from typing import Any

import pytest
from notify_publisher.request import PublishRequest, refusal
from prometheus_client import REGISTRY
from redis._parsers.base import BaseParser
from redis.exceptions import RedisError

from service.brokers.redis import RedisBroker
from service.brokers.refusals import OTHER, REFUSALS, RecentRefusals, refusal_for
from service.errors import domain_error_response
from service.failures import BrokerRefusedError
from service.routers import health
from tests.support.metrics import metric

REPLIES = [
    ("OOM command not allowed when used memory > 'maxmemory'.", "redis_oom"),
    # Redis 7 keeps the code of an error raised inside a script and appends where.
    (
        "OOM command not allowed when used memory > 'maxmemory'. script: 1b2c, on @user_script:5.",
        "redis_oom",
    ),
    ("READONLY You can't write against a read only replica.", "redis_readonly"),
    ("NOSCRIPT No matching script. Please use EVAL.", "redis_noscript"),
    (
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
        "redis_busy",
    ),
    ("LOADING Redis is loading the dataset in memory", "redis_loading"),
    (
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "redis_masterdown",
    ),
    ("CLUSTERDOWN The cluster is down", "redis_clusterdown"),
    ("CLUSTERDOWN Hash slot not served", "redis_clusterdown"),
    ("TRYAGAIN Multiple keys request during rehashing of slot", "redis_tryagain"),
    ("MOVED 3999 127.0.0.1:6381", "redis_moved"),
    ("ASK 3999 127.0.0.1:6381", "redis_moved"),
    ("NOREPLICAS Not enough good replicas to write.", "redis_noreplicas"),
    (
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable "
        "to persist to disk.",
        "redis_misconf",
    ),
    ("NOPERM User app has no permissions to run the 'xadd' command", "redis_noperm"),
    ("EXECABORT Transaction discarded because of previous errors.", "redis_execabort"),
    ("CROSSSLOT Keys in request don't hash to the same slot", "redis_crossslot"),
    ("WRONGTYPE Operation against a key holding the wrong kind of value", "redis_error"),
    ("ERR Error running script (call to f_1b2c): @user_script:3: bad argument", "redis_error"),
]


def reply_error(line: str) -> RedisError:
    error = BaseParser.parse_error(line)  # type: ignore[no-untyped-call]
    assert isinstance(error, RedisError)
    return error


@pytest.mark.parametrize(("line", "cause"), REPLIES)
def test_each_error_reply_names_its_cause(line: str, cause: str) -> None:
    refusal = refusal_for(reply_error(line))
    assert refusal.cause == cause
    assert refusal.retry_after_s >= 1
    # The client-facing message never carries the reply's text.
    assert line.split(" ", 1)[1][:20] not in refusal.message


def test_every_listed_code_has_its_own_cause_and_the_rest_share_one() -> None:
    causes = [refusal.cause for refusal in REFUSALS.values()]
    assert len(set(causes)) == len(causes)
    assert OTHER.cause not in causes
    assert {cause for _, cause in REPLIES} == {*causes, OTHER.cause}
    # Each cause's series exists at 0 from the start (alerts see the first refusal).
    for cause in (*causes, OTHER.cause):
        # Exists (other tests in this process may have counted one already).
        assert (
            REGISTRY.get_sample_value("notify_redis_refusals_total", {"cause": cause}) is not None
        )
    for cause in (*causes, OTHER.cause, health.SHARDS_DOWN_CAUSE):
        assert REGISTRY.get_sample_value("notify_ready_degraded", {"cause": cause}) is not None


class _Refusing:
    """Stands in for the publish runner at the moment Redis refuses: the script's
    reply is an error, which the runner hands back as the request's outcome."""

    def __init__(self, error: RedisError) -> None:
        self.error = error

    async def run(self, requests: Any, durability: Any) -> list[Any]:
        return [refusal(self.error) for _ in requests]

    async def aclose(self) -> None:
        """Nothing to close."""


@pytest.mark.parametrize(("line", "cause"), REPLIES)
async def test_a_refused_publish_is_a_retryable_503_with_the_cause(line: str, cause: str) -> None:
    broker = RedisBroker.standalone(
        url="redis://127.0.0.1:1/0",
        control_channel="t:control",
        max_connections=2,
        pool_timeout_s=1,
        socket_timeout_s=1,
    )
    broker._runner = _Refusing(reply_error(line))  # type: ignore[assignment]
    before = metric("notify_redis_refusals_total", cause=cause)
    request = PublishRequest(keys=("t:history:{pt_1}",), args=("{}", 10, 60, "t:patient:{pt_1}"))
    try:
        with pytest.raises(BrokerRefusedError) as raised:
            await broker.publish_events([request], None)
    finally:
        await broker.stop()
    assert raised.value.cause == cause
    assert metric("notify_redis_refusals_total", cause=cause) == before + 1
    assert broker.recent_refusals() == [cause]

    response = domain_error_response(raised.value)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) == refusal_for(reply_error(line)).retry_after_s
    body = json.loads(bytes(response.body))
    assert body["code"] == cause
    assert body["detail"]


def test_recent_refusals_end_with_their_window_or_a_write() -> None:
    recent = RecentRefusals(window_s=0.0)
    recent.record("redis_oom")
    assert recent.causes() == []
    recent = RecentRefusals(window_s=60.0)
    recent.record("redis_readonly")
    recent.record("redis_oom")
    assert recent.causes() == ["redis_oom", "redis_readonly"]
    recent.clear()
    assert recent.causes() == []
