"""The outbox relay: claims pending rows of `notify_outbox`, publishes them
through the idempotent publish path, marks them published, in id order per
patient, with any number of relays on one table.

How several relays share the table without reordering a patient's rows: a claim
locks each chosen patient's *oldest pending row* (its head) with `FOR UPDATE SKIP
LOCKED`, then reads that patient's next pending rows after it. A relay that finds
a head locked skips the whole patient: it never looks past a head it does not
hold, so one patient's rows are only ever in one relay's hands, in id order. The
claim, the publishes and the update that marks the rows are one transaction: a
relay that dies (kill -9, lost connection) releases its locks and leaves its rows
pending; the next claim publishes them again, and the idempotency key (the row's
own, else one derived from the row) makes the repeat deliver nothing.

Why id order is commit order per patient: see `schema.sql` (the insert trigger
serialises a patient's writers and draws the id under that lock).

Wake-ups: `LISTEN notify_outbox` (the insert trigger NOTIFYs at commit), with a
poll every `poll_interval_s` as the safety net (notifications sent while the
listener is disconnected are lost). Failures of Redis or PostgreSQL are retried
with capped, jittered backoff, forever: rows wait in the table meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg
import structlog
from notify_publisher.events import EventCreate
from notify_publisher.keys import is_idempotency_key
from pydantic import ValidationError

from service import metrics
from service.failures import DomainError
from service.outbox.publishing import OutboxPublish
from service.services.errors import (
    EventTooLargeError,
    IdempotencyKeyReusedError,
    InvalidEventError,
    UnavailableError,
)

log = structlog.get_logger(__name__)

NOTIFY_CHANNEL: Final = "notify_outbox"
# Rows of one round sent as one pipeline (one request each way per pipeline).
ROUND_PIPELINE: Final = 64

# Each patient's oldest pending row among the oldest pending rows, locked; a
# locked head (another relay's) is skipped with its whole patient.
_CLAIM_HEADS = """
WITH candidates AS (
    SELECT DISTINCT oldest.patient_id FROM (
        SELECT patient_id FROM notify_outbox
        WHERE published_at IS NULL ORDER BY id LIMIT %(scan)s
    ) AS oldest
),
heads AS (
    SELECT head.id FROM candidates
    CROSS JOIN LATERAL (
        SELECT o.id FROM notify_outbox AS o
        WHERE o.patient_id = candidates.patient_id AND o.published_at IS NULL
        ORDER BY o.id LIMIT 1
    ) AS head
)
SELECT o.patient_id FROM notify_outbox AS o
WHERE o.id IN (SELECT id FROM heads) AND o.published_at IS NULL
ORDER BY o.id
LIMIT %(patients)s
FOR UPDATE SKIP LOCKED
"""

# The claimed patients' pending rows, head first, at most `per_patient` each.
_CLAIMED_ROWS = """
SELECT r.id, r.patient_id, r.event::text, r.idempotency_key, r.created_at
FROM unnest(%(patients)s::text[]) AS p(patient_id)
CROSS JOIN LATERAL (
    SELECT o.id, o.patient_id, o.event, o.idempotency_key, o.created_at
    FROM notify_outbox AS o
    WHERE o.patient_id = p.patient_id AND o.published_at IS NULL
    ORDER BY o.id LIMIT %(per_patient)s
) AS r
ORDER BY r.id
"""

_MARK_PUBLISHED = """
UPDATE notify_outbox AS o SET published_at = clock_timestamp(), published_id = d.published_id
FROM unnest(%(ids)s::bigint[], %(published_ids)s::text[]) AS d(id, published_id)
WHERE o.id = d.id
"""

_SET_ASIDE = """
WITH moved AS (
    DELETE FROM notify_outbox AS o
    USING unnest(%(ids)s::bigint[], %(reasons)s::text[], %(errors)s::text[]) AS d(id, reason, error)
    WHERE o.id = d.id
    RETURNING o.id, o.event, o.idempotency_key, o.patient_id, o.created_at, d.reason, d.error
)
INSERT INTO notify_outbox_dead (id, event, idempotency_key, patient_id, created_at, reason, error)
SELECT id, event, idempotency_key, patient_id, created_at, reason, error FROM moved
ON CONFLICT (id) DO NOTHING
"""

_BACKLOG = """
SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)
FROM notify_outbox WHERE published_at IS NULL
"""

# Small batches, each its own short transaction; rows another session holds
# (none should: published rows are never locked again) are left for next time.
_CLEANUP = """
DELETE FROM notify_outbox WHERE id IN (
    SELECT id FROM notify_outbox
    WHERE published_at IS NOT NULL AND published_at < clock_timestamp() - %(retention)s
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
"""


@dataclass(frozen=True, slots=True)
class RelayConfig:
    # Rows published per claim (one transaction).
    batch_size: int = 500
    # Patients per claim: each gets up to batch_size / patients rows.
    claim_patients: int = 100
    # Pipelines of one round in flight at once (a round: each claimed patient's
    # next row; `ROUND_PIPELINE` rows per pipeline).
    publish_concurrency: int = 16
    # The safety net under LISTEN/NOTIFY.
    poll_interval_s: float = 1.0
    # Published rows are deleted this long after publishing, `cleanup_batch` rows
    # per transaction, every `cleanup_interval_s`.
    retention_s: float = 24 * 3600.0
    cleanup_interval_s: float = 60.0
    cleanup_batch: int = 1000
    # Backlog gauges are refreshed this often.
    metrics_interval_s: float = 5.0
    backoff_min_s: float = 0.2
    backoff_max_s: float = 10.0
    # A connection attempt or statement that hangs (a partitioned network) fails.
    connect_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    patient_id: str
    event_json: str
    idempotency_key: str | None
    created_at: datetime

    @property
    def publish_key(self) -> str:
        """The row's own key, else one that names this row and no other: the id
        with its creation time (another database's row with the same id differs)."""
        if self.idempotency_key is not None:
            return self.idempotency_key
        return f"outbox:{self.id}:{int(self.created_at.timestamp() * 1_000_000)}"


@dataclass(slots=True)
class BatchResult:
    published: list[tuple[int, str]] = field(default_factory=list)
    set_aside: list[tuple[int, str, str]] = field(default_factory=list)
    # A failure worth retrying stopped (part of) the batch.
    retry_error: BaseException | None = None


class PoisonRowError(Exception):
    """A row that can never be published: `reason` is a fixed word, `detail` names
    fields and problems, never values (no PHI in logs or the dead table)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def parse_row(row: OutboxRow) -> EventCreate:
    """The row's event, or `PoisonRowError`."""
    # A key the publish path would refuse: the row is set aside, never re-keyed.
    if row.idempotency_key is not None and not is_idempotency_key(row.idempotency_key):
        raise PoisonRowError(
            "invalid_idempotency_key", "idempotency_key: 1 to 255 visible ASCII characters"
        )
    try:
        return EventCreate.model_validate_json(row.event_json)
    except ValidationError as exc:
        errors = [
            {"loc": list(e["loc"]), "type": e["type"], "msg": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise PoisonRowError("invalid", json.dumps(errors)) from None


class Backoff:
    """Capped exponential backoff with jitter; `reset()` after a success."""

    def __init__(self, min_s: float, max_s: float) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.max_s, self.min_s * 2**self.attempt)
        self.attempt += 1
        jittered: float = delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security
        return jittered

    def reset(self) -> None:
        self.attempt = 0


class OutboxRelay:
    """One relay: `run()` until cancelled. Readiness: `ready`; state: `database_ok`,
    `redis_ok`."""

    def __init__(
        self,
        *,
        dsn: str,
        publish: OutboxPublish,
        config: RelayConfig | None = None,
        connect: Callable[..., Awaitable[psycopg.AsyncConnection[Any]]] | None = None,
    ) -> None:
        self._dsn = dsn
        self._publish = publish
        self.config = config or RelayConfig()
        self._connect = connect or psycopg.AsyncConnection.connect
        self._wakeup = asyncio.Event()
        self.database_ok = False
        self.redis_ok = True
        self.listening = False
        self._next_cleanup = 0.0
        self._next_metrics = 0.0

    @property
    def ready(self) -> bool:
        return self.database_ok and self.redis_ok

    def wake(self) -> None:
        self._wakeup.set()

    async def _open(self) -> psycopg.AsyncConnection[Any]:
        return await self._connect(
            self._dsn,
            autocommit=True,
            connect_timeout=max(1, int(self.config.connect_timeout_s)),
            application_name="notify-relay",
        )

    async def run(self) -> None:
        """Relay until cancelled; every failure is retried with backoff."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._listen_forever())
            group.create_task(self._relay_forever())

    async def _relay_forever(self) -> None:
        backoff = Backoff(self.config.backoff_min_s, self.config.backoff_max_s)
        while True:
            try:
                conn = await self._open()
            except (psycopg.Error, OSError) as exc:
                await self._database_down(exc, backoff, "connect")
                continue
            try:
                async with conn:
                    self.database_ok = True
                    log.info("outbox_relay_connected")
                    await self._relay_on(conn, backoff)
            except (psycopg.Error, OSError) as exc:
                await self._database_down(exc, backoff, "query")

    async def _database_down(self, exc: BaseException, backoff: Backoff, stage: str) -> None:
        self.database_ok = False
        metrics.OUTBOX_FAILURES.labels(reason="database_unavailable").inc()
        delay = backoff.next_delay()
        # The exception's class only: a message may carry the host or the user.
        log.warning(
            "outbox_database_unavailable",
            stage=stage,
            error=type(exc).__name__,
            retry_in_s=round(delay, 2),
        )
        await asyncio.sleep(delay)

    async def _relay_on(self, conn: psycopg.AsyncConnection[Any], backoff: Backoff) -> None:
        redis_backoff = Backoff(self.config.backoff_min_s, self.config.backoff_max_s)
        while True:
            self._wakeup.clear()
            await self._housekeeping(conn)
            result = await self.relay_batch(conn)
            backoff.reset()
            if result.retry_error is not None:
                self.redis_ok = False
                reason = (
                    "redis_unavailable"
                    if isinstance(result.retry_error, UnavailableError)
                    else "publish_error"
                )
                metrics.OUTBOX_FAILURES.labels(reason=reason).inc()
                delay = redis_backoff.next_delay()
                log.warning(
                    "outbox_publish_failed",
                    reason=reason,
                    error=type(result.retry_error).__name__,
                    published=len(result.published),
                    retry_in_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
                continue
            if result.published:
                if not self.redis_ok:
                    log.info("outbox_publish_recovered")
                self.redis_ok = True
                redis_backoff.reset()
            if len(result.published) + len(result.set_aside) >= self.config.batch_size:
                continue  # a full batch: more is probably waiting
            if result.published or result.set_aside:
                continue  # cheap to check once more before sleeping
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.config.poll_interval_s)

    async def relay_batch(self, conn: psycopg.AsyncConnection[Any]) -> BatchResult:
        """Claim, publish and mark one batch in one transaction."""
        cfg = self.config
        async with conn.transaction():
            heads = await conn.execute(
                _CLAIM_HEADS,
                {"scan": cfg.batch_size * 4, "patients": cfg.claim_patients},
            )
            patients = [r[0] for r in await heads.fetchall()]
            if not patients:
                return BatchResult()
            cursor = await conn.execute(
                _CLAIMED_ROWS,
                {"patients": patients, "per_patient": max(1, cfg.batch_size // len(patients))},
            )
            rows = [OutboxRow(*r) for r in await cursor.fetchall()]
            result = await self._publish_rows(rows)
            if result.published:
                ids, published_ids = zip(*result.published, strict=True)
                await conn.execute(
                    _MARK_PUBLISHED, {"ids": list(ids), "published_ids": list(published_ids)}
                )
            if result.set_aside:
                ids2, reasons, errors = zip(*result.set_aside, strict=True)
                await conn.execute(
                    _SET_ASIDE,
                    {"ids": list(ids2), "reasons": list(reasons), "errors": list(errors)},
                )
        # Counted once committed: a rolled-back batch is published again later.
        metrics.OUTBOX_PUBLISHED.inc(len(result.published))
        for row_id, reason, _ in result.set_aside:
            metrics.OUTBOX_SET_ASIDE.inc()
            log.warning("outbox_row_set_aside", row_id=row_id, reason=reason)
        return result

    async def _publish_rows(self, rows: list[OutboxRow]) -> BatchResult:
        """Round after round, each patient's next row: a round's rows go out as
        pipelines, so a patient's row is only sent once its previous one is stored."""
        pending: dict[str, deque[OutboxRow]] = defaultdict(deque)
        for row in rows:  # in id order
            pending[row.patient_id].append(row)
        result = BatchResult()
        while pending and result.retry_error is None:
            round_rows: list[tuple[OutboxRow, EventCreate]] = []
            for patient in list(pending):
                row = pending[patient].popleft()
                if not pending[patient]:
                    del pending[patient]
                try:
                    round_rows.append((row, parse_row(row)))
                except PoisonRowError as exc:
                    result.set_aside.append((row.id, exc.reason, exc.detail))
            try:
                answers = await self._publish_round(round_rows)
            except Exception as exc:
                # The round as a whole: its stored rows are replays next time.
                result.retry_error = exc
                break
            for (row, _), answer in zip(round_rows, answers, strict=True):
                if isinstance(answer, str):
                    result.published.append((row.id, answer))
                elif isinstance(answer, InvalidEventError):
                    result.set_aside.append((row.id, "rule", answer.public_message))
                elif isinstance(answer, EventTooLargeError | IdempotencyKeyReusedError):
                    # Too large, or its key already published another event (the
                    # same event again would have been a replay): never publishable.
                    result.set_aside.append((row.id, answer.code, answer.public_message))
                else:
                    # Worth retrying: this patient's later rows wait for it.
                    result.retry_error = answer
                    pending.pop(row.patient_id, None)
        return result

    async def _publish_round(
        self, round_rows: list[tuple[OutboxRow, EventCreate]]
    ) -> list[str | DomainError]:
        """One round in pipelines of `ROUND_PIPELINE` rows, `publish_concurrency`
        of them in flight at once."""
        gate = asyncio.Semaphore(self.config.publish_concurrency)
        items = [(event, row.publish_key) for row, event in round_rows]

        async def chunk(start: int) -> list[str | DomainError]:
            async with gate:
                return await self._publish(items[start : start + ROUND_PIPELINE])

        chunks = await asyncio.gather(*(chunk(i) for i in range(0, len(items), ROUND_PIPELINE)))
        return [answer for answers in chunks for answer in answers]

    async def _housekeeping(self, conn: psycopg.AsyncConnection[Any]) -> None:
        now = time.monotonic()
        if now >= self._next_metrics:
            self._next_metrics = now + self.config.metrics_interval_s
            await self.refresh_backlog(conn)
        if now >= self._next_cleanup:
            self._next_cleanup = now + self.config.cleanup_interval_s
            deleted = await self.cleanup(conn)
            if deleted:
                log.info("outbox_cleanup", deleted=deleted)

    async def refresh_backlog(self, conn: psycopg.AsyncConnection[Any]) -> tuple[int, float]:
        cursor = await conn.execute(_BACKLOG)
        row = await cursor.fetchone()
        assert row is not None
        count, age = int(row[0]), float(row[1])
        metrics.OUTBOX_BACKLOG.set(count)
        metrics.OUTBOX_OLDEST_AGE.set(age)
        return count, age

    async def cleanup(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Delete published rows older than the retention, batch by batch."""
        total = 0
        retention = timedelta(seconds=self.config.retention_s)
        while True:
            cursor = await conn.execute(
                _CLEANUP, {"retention": retention, "batch": self.config.cleanup_batch}
            )
            total += cursor.rowcount
            if cursor.rowcount < self.config.cleanup_batch:
                return total

    async def _listen_forever(self) -> None:
        backoff = Backoff(self.config.backoff_min_s, self.config.backoff_max_s)
        while True:
            try:
                conn = await self._open()
                async with conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.listening = True
                    backoff.reset()
                    # Rows committed while nobody listened: look once now.
                    self.wake()
                    async for _ in conn.notifies():
                        self.wake()
            except (psycopg.Error, OSError) as exc:
                self.listening = False
                delay = backoff.next_delay()
                log.warning(
                    "outbox_listener_disconnected",
                    error=type(exc).__name__,
                    retry_in_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
