"""`HttpPublisher` (asyncio) and `SyncHttpPublisher`: publish through the service's
HTTP API (`POST /v1/events`), for backends that may reach only that, not Redis.

    with SyncHttpPublisher("https://notify.clinic.example", token=service_token) as p:
        event_id = p.publish(event)

`token` is a service token (`role=service`, `scope=events:publish`: the README's
"Tokens for backends"), or a callable returning a fresh one, called before every
attempt (so a token that expired between attempts is renewed).

Retries, with jittered exponential backoff: connection errors and timeouts, 429
and 503 (waiting at least their `Retry-After`), and a gateway's 502 and 504. Never
another 4xx (the request itself is wrong: retrying cannot help) nor a 500. Every
attempt of one publish carries the same `Idempotency-Key` (the caller's, or one
generated once per event), so a retry after a lost response is answered with the
first attempt's result and the event is stored and delivered once.

Once the retries are spent: `PublishRefusedError`, whose `cause` is the service's
503 code (`redis_oom`, `not_durable` …), `unavailable` when the service never
answered, or `http_429` / `http_502` / `http_504`. Other answers raise at once:
`InvalidEventError` (400, 413, 422), `IdempotencyKeyReusedError` (422),
`IdempotencyKeyInFlightError` (409), `PublishRejectedError` (401, 403, 404, 500 …).
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import httpx

from notify_publisher.errors import (
    IdempotencyKeyInFlightError,
    IdempotencyKeyReusedError,
    InvalidEventError,
    PublisherError,
    PublishRefusedError,
)
from notify_publisher.events import EventCreate
from notify_publisher.keys import is_idempotency_key
from notify_publisher.request import new_idempotency_key

EventInput = EventCreate | Mapping[str, Any]
SyncToken = str | Callable[[], str]
AsyncToken = str | Callable[[], str | Awaitable[str]]

PATH: Final = "/v1/events"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
# Worth another attempt: the service or Redis is busy or away (429, 503), or a
# proxy in front lost the service (502, 504). The idempotency key makes each safe.
RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})
# A `Retry-After` above this is taken as this: a publish should not hang for long.
MAX_RETRY_AFTER_S: Final = 30.0


class PublishRejectedError(PublisherError):
    """The service refused the request for good (401, 403, 404, 500 …): fix the
    token, its scope or the base URL; retrying the same request cannot help.
    `status` is the HTTP status, `code` the body's code (`unauthorized` …)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`retries` attempts after the first; the n-th waits a random time between
    half and all of `min(max_s, base_s * 2**n)` (at least `Retry-After`)."""

    retries: int = 4
    base_s: float = 0.2
    max_s: float = 10.0

    def delay(self, attempt: int, retry_after_s: float | None) -> float:
        backoff = min(self.max_s, self.base_s * 2.0 ** min(attempt, 30)) * random.uniform(0.5, 1.0)  # noqa: S311
        if retry_after_s is None:
            return backoff
        # Never earlier than asked; a little later, so clients don't come back in step.
        return max(backoff, min(retry_after_s, MAX_RETRY_AFTER_S) * random.uniform(1.0, 1.2))  # noqa: S311

    def wait_s(self, attempt: int, retry: _Retry) -> float:
        """How long to wait before the next attempt after the `attempt`-th (from
        0) failed; raises its error once the retries are spent."""
        if attempt >= self.retries:
            raise retry.error
        return self.delay(attempt, retry.after_s)


def event_body(event: EventInput) -> dict[str, Any]:
    """The JSON body: validated here first (a wrong shape or a broken rule is the
    caller's bug, raised before any request)."""
    model = event if isinstance(event, EventCreate) else EventCreate.model_validate(event)
    violation = model.rule_violation()
    if violation is not None:
        raise InvalidEventError(violation)
    body: dict[str, Any] = model.model_dump(mode="json", exclude_none=True)
    return body


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # absent, or an HTTP date: the backoff decides


def _error_fields(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return "http_error", response.reason_phrase
    return str(body.get("code") or "http_error"), str(body.get("detail") or "")


@dataclass(frozen=True, slots=True)
class _Retry:
    error: PublisherError
    after_s: float | None


def outcome(response: httpx.Response) -> str | _Retry:
    """The stored id of a 201 (first time or replayed), a `_Retry` to wait and try
    again, or raises what the answer means."""
    status = response.status_code
    if status in (200, 201):
        return str(response.json()["id"])
    code, detail = _error_fields(response)
    if status in RETRY_STATUSES:
        after = retry_after(response)
        # The service's 503 code is the cause (`redis_oom` …), as the Redis
        # publishers' `PublishRefusedError.cause`; "unreachable" is `unavailable`.
        cause = code if status == 503 else f"http_{status}"
        if cause == "broker_unavailable":
            cause = "unavailable"
        refused = PublishRefusedError(
            cause, f"{status} {code}: {detail}", retry_after_s=round(after or 1)
        )
        return _Retry(refused, after)
    if status == 409:
        raise IdempotencyKeyInFlightError(detail)
    if status == 422 and code == "idempotency_key_reused":
        raise IdempotencyKeyReusedError(detail)
    if status in (400, 413, 422):
        raise InvalidEventError(f"{status} {code}: {detail}")
    raise PublishRejectedError(status, code, detail)


def _unavailable(exc: httpx.TransportError) -> _Retry:
    """A connection refused, reset or timed out: the request may or may not have
    run (the key makes the retry safe)."""
    return _Retry(PublishRefusedError("unavailable", f"{type(exc).__name__}: {exc}"), None)


def _headers(token: str, key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", IDEMPOTENCY_HEADER: key}


def _publish_url(base_url: str) -> str:
    return base_url.rstrip("/") + PATH


def idempotency_key_for(given: str | None) -> str:
    """The caller's key, or one generated once for this event (every attempt of it
    then carries the same one)."""
    if given is None:
        return new_idempotency_key()
    if not is_idempotency_key(given):
        raise ValueError("an idempotency key is 1 to 255 visible ASCII characters")
    return given


class HttpPublisher:
    """Publishes over HTTP from asyncio code; an async context manager."""

    def __init__(
        self,
        base_url: str,
        *,
        token: AsyncToken,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._token = token
        self._retry = retry or RetryPolicy()
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._url = _publish_url(base_url)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def _bearer(self) -> str:
        if isinstance(self._token, str):
            return self._token
        token = self._token()
        return await token if inspect.isawaitable(token) else token

    async def publish(self, event: EventInput, *, idempotency_key: str | None = None) -> str:
        """Store and deliver `event` through the service; returns its id (the first
        attempt's id when a retry was answered as a replay)."""
        body = event_body(event)
        key = idempotency_key_for(idempotency_key)
        attempt = 0
        while True:
            try:
                response = await self._client.post(
                    self._url, json=body, headers=_headers(await self._bearer(), key)
                )
                result = outcome(response)
            except httpx.TransportError as exc:
                result = _unavailable(exc)
            if isinstance(result, str):
                return result
            await asyncio.sleep(self._retry.wait_s(attempt, result))
            attempt += 1


class SyncHttpPublisher:
    """`HttpPublisher` for blocking code (Django, Flask, Celery); safe to share
    between threads (one `httpx.Client`, its pool is thread-safe)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: SyncToken,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self._token = token
        self._retry = retry or RetryPolicy()
        self._own_client = client is None
        self._client = client or httpx.Client(timeout=timeout_s)
        self._url = _publish_url(base_url)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def publish(self, event: EventInput, *, idempotency_key: str | None = None) -> str:
        """As `HttpPublisher.publish`, blocking."""
        body = event_body(event)
        key = idempotency_key_for(idempotency_key)
        attempt = 0
        while True:
            token = self._token if isinstance(self._token, str) else self._token()
            try:
                response = self._client.post(self._url, json=body, headers=_headers(token, key))
                result = outcome(response)
            except httpx.TransportError as exc:
                result = _unavailable(exc)
            if isinstance(result, str):
                return result
            time.sleep(self._retry.wait_s(attempt, result))
            attempt += 1


__all__ = ["HttpPublisher", "PublishRejectedError", "RetryPolicy", "SyncHttpPublisher"]
