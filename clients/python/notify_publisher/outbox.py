"""Write an event into the PostgreSQL outbox (`notify_outbox`) inside your own
transaction: `notify relay` publishes it if, and only if, that transaction commits.

    with conn.transaction():                          # psycopg 3
        conn.execute("UPDATE appointments SET ... WHERE id = %s", (appointment_id,))
        enqueue(conn, event, idempotency_key=f"{appointment_id}-v{version}")

    async with aconn.transaction():                   # psycopg 3, asyncio
        await enqueue(aconn, event)

The event is checked here as a publish checks it (`pydantic.ValidationError`,
`InvalidEventError`, `EventTooLargeError`), so a bug fails the caller's own
transaction instead of becoming a row the relay sets aside. SQLAlchemy: run the
same statement on the session, with `outbox_json()` for the value:

    session.execute(
        text("INSERT INTO notify_outbox (event, idempotency_key) "
             "VALUES (CAST(:event AS jsonb), :key)"),
        {"event": outbox_json(event), "key": key},
    )

psycopg is not a dependency of this package: a backend that has a psycopg
connection to hand over has it already.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, Final, overload

from notify_publisher.events import EventCreate
from notify_publisher.keys import is_idempotency_key
from notify_publisher.request import prepare_event

if TYPE_CHECKING:
    import psycopg

INSERT: Final = (
    "INSERT INTO notify_outbox (event, idempotency_key) VALUES (%s::jsonb, %s) RETURNING id"
)

EventInput = EventCreate | Mapping[str, Any]


def outbox_json(event: EventInput) -> str:
    """The event as the `event` column takes it (what `POST /v1/events` takes),
    after the checks of a publish."""
    return prepare_event(event).event.model_dump_json(exclude_none=True)


def _params(event: EventInput, idempotency_key: str | None) -> tuple[str, str | None]:
    if idempotency_key is not None and not is_idempotency_key(idempotency_key):
        raise ValueError("idempotency_key must be 1 to 255 visible ASCII characters")
    return outbox_json(event), idempotency_key


@overload
def enqueue(
    conn: psycopg.AsyncConnection[Any], event: EventInput, idempotency_key: str | None = None
) -> Awaitable[int]: ...


@overload
def enqueue(
    conn: psycopg.Connection[Any], event: EventInput, idempotency_key: str | None = None
) -> int: ...


def enqueue(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
    event: EventInput,
    idempotency_key: str | None = None,
) -> int | Awaitable[int]:
    """Insert `event` into `notify_outbox` on `conn`, in whatever transaction `conn`
    is in (nothing is committed here); returns the row's id, to be awaited for an
    `AsyncConnection`."""
    import psycopg

    params = _params(event, idempotency_key)
    if isinstance(conn, psycopg.AsyncConnection):
        return _enqueue_async(conn, params)
    row = conn.execute(INSERT, params).fetchone()
    assert row is not None
    return int(row[0])


async def _enqueue_async(conn: psycopg.AsyncConnection[Any], params: tuple[str, str | None]) -> int:
    cursor = await conn.execute(INSERT, params)
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])
