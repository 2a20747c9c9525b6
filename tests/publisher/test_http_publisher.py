"""`HttpPublisher` and `SyncHttpPublisher`, as a backend that may reach only the
HTTP API uses them: a response lost after the service stored the event is retried
with the same `Idempotency-Key` (stored once, delivered once); 429/503/connection
errors are retried honouring `Retry-After`, other 4xx never."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest
from notify_publisher import (
    HttpPublisher,
    IdempotencyKeyInFlightError,
    IdempotencyKeyReusedError,
    InvalidEventError,
    PublishRefusedError,
    SyncHttpPublisher,
)
from notify_publisher.http import PublishRejectedError, RetryPolicy

from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import run_app
from tests.support.events import event
from tests.support.raw_redis import sync_client
from tests.support.sse import open_sse, opened
from tests.support.tcp_proxy import ReplyDroppingProxy

pytestmark = pytest.mark.own_topology

ME = "/v1/patients/me/events"
QUICK = RetryPolicy(retries=3, base_s=0.01, max_s=0.05)


@pytest.mark.parametrize("blocking", [False, True])
@pytest.mark.parametrize("given_key", [None, "job-42"])
async def test_a_lost_response_is_retried_and_the_event_stored_and_delivered_once(
    make_settings: SettingsFactory, tokens: Tokens, blocking: bool, given_key: str | None
) -> None:
    settings = make_settings()
    service_token = tokens.service()
    calls: list[int] = []

    def token() -> str:
        calls.append(1)
        return service_token

    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        open_sse(http, ME, headers=bearer(tokens.patient("pt_1"))) as stream,
    ):
        await opened(stream)
        port = int(app.base_url.rsplit(":", 1)[1])
        with ReplyDroppingProxy(("127.0.0.1", port), drop_reply_after=b"POST /v1/events") as proxy:
            url = f"http://127.0.0.1:{proxy.port}"
            if blocking:

                def publish_blocking() -> str:
                    with SyncHttpPublisher(url, token=token, retry=QUICK) as publisher:
                        return publisher.publish(event("pt_1", "ap_1"), idempotency_key=given_key)

                event_id = await asyncio.to_thread(publish_blocking)
            else:
                async with HttpPublisher(url, token=token, retry=QUICK) as publisher:
                    event_id = await publisher.publish(
                        event("pt_1", "ap_1"), idempotency_key=given_key
                    )
            assert proxy.dropped.is_set(), "no response was dropped: the test proved nothing"
            # A second event afterwards: once it arrived, a duplicate of the first would have.
            async with HttpPublisher(url, token=service_token) as publisher:
                second = await publisher.publish(event("pt_1", "ap_2"))
        frames = await stream.wait_events(2)
        assert [f.id for f in frames] == [event_id, second]
        assert len(calls) == 2  # a fresh token for each attempt
        with sync_client(settings) as r:
            history = r.xrange(f"{settings.key_prefix}history:{{pt_1}}")
        assert [entry_id.decode() for entry_id, _ in history] == [event_id, second]


Handler = Callable[[httpx.Request], httpx.Response]


def scripted(*answers: httpx.Response | Exception) -> tuple[list[httpx.Request], Handler]:
    """A transport answering each request with the next answer (an exception is
    raised as the transport's)."""
    seen: list[httpx.Request] = []
    pending = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = pending.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return seen, handle


def stored(event_id: str = "1-0") -> httpx.Response:
    return httpx.Response(201, json={**event("pt_1"), "id": event_id})


def refused(status: int, code: str, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, json={"detail": "no", "code": code}, headers=headers)


async def test_retries_429_503_and_connection_errors_with_one_key() -> None:
    seen, handle = scripted(
        httpx.ConnectError("refused"),
        refused(503, "redis_oom", "0"),
        refused(429, "rate_limited", "0"),
        httpx.ReadTimeout("slow"),
        stored("7-0"),
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    publisher = HttpPublisher(
        "http://notify", token="t0k", client=client, retry=RetryPolicy(retries=4, base_s=0.001)
    )
    assert await publisher.publish(event("pt_1")) == "7-0"
    await client.aclose()
    keys = {r.headers["Idempotency-Key"] for r in seen}
    assert len(seen) == 5
    assert len(keys) == 1
    assert [r.headers["Authorization"] for r in seen] == ["Bearer t0k"] * 5
    assert json.loads(seen[0].content)["patient_id"] == "pt_1"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (refused(400, "invalid_event"), InvalidEventError),
        (refused(401, "unauthorized"), PublishRejectedError),
        (refused(403, "forbidden"), PublishRejectedError),
        (refused(404, "not_found"), PublishRejectedError),
        (refused(409, "idempotency_key_in_flight"), IdempotencyKeyInFlightError),
        (refused(413, "event_too_large"), InvalidEventError),
        (refused(422, "idempotency_key_reused"), IdempotencyKeyReusedError),
        (refused(422, "validation_error"), InvalidEventError),
        (refused(500, "internal_error"), PublishRejectedError),
    ],
)
def test_never_retries_other_answers(answer: httpx.Response, error: type[Exception]) -> None:
    seen, handle = scripted(answer, stored())
    client = httpx.Client(transport=httpx.MockTransport(handle))
    publisher = SyncHttpPublisher("http://notify", token="t", client=client, retry=QUICK)
    with pytest.raises(error):
        publisher.publish(event("pt_1"))
    assert len(seen) == 1
    client.close()


def test_gives_up_with_the_last_cause_after_its_retries() -> None:
    seen, handle = scripted(*[refused(503, "redis_readonly", "0") for _ in range(4)])
    client = httpx.Client(transport=httpx.MockTransport(handle))
    publisher = SyncHttpPublisher("http://notify", token="t", client=client, retry=QUICK)
    with pytest.raises(PublishRefusedError) as raised:
        publisher.publish(event("pt_1"), idempotency_key="k-1")
    assert raised.value.cause == "redis_readonly"
    assert [r.headers["Idempotency-Key"] for r in seen] == ["k-1"] * 4
    client.close()


def test_waits_at_least_retry_after_and_backs_off_with_jitter() -> None:
    policy = RetryPolicy(retries=5, base_s=0.5, max_s=4.0)
    for _ in range(200):
        assert 3.0 <= policy.delay(0, 3.0) <= 3.6
        assert 0.25 <= policy.delay(0, None) <= 0.5
        assert 2.0 <= policy.delay(10, None) <= 4.0
        assert policy.delay(0, 3600.0) <= 36.0  # a huge Retry-After is capped
    assert len({policy.delay(2, None) for _ in range(50)}) > 1  # jittered


def test_a_broken_event_is_refused_before_any_request() -> None:
    seen, handle = scripted(stored())
    client = httpx.Client(transport=httpx.MockTransport(handle))
    publisher = SyncHttpPublisher("http://notify", token="t", client=client)
    backwards = event("pt_1", starts_at="2026-12-01T15:00:00Z", ends_at="2026-12-01T14:00:00Z")
    with pytest.raises(InvalidEventError):
        publisher.publish(backwards)
    assert seen == []
    client.close()
