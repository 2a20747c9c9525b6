"""`notify_publisher.outbox.enqueue` in a backend's own transaction, sync and
asyncio: rolled back, nothing; committed, the relay delivers it once."""

from __future__ import annotations

import json

import httpx
import psycopg
import pytest
from notify_publisher import EventCreate, InvalidEventError
from notify_publisher.outbox import enqueue, outbox_json
from pydantic import ValidationError

from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import run_app
from tests.support.events import event
from tests.support.sse import open_sse, opened


def test_enqueue_writes_in_the_callers_transaction(outbox_dsn: str) -> None:
    with psycopg.connect(outbox_dsn) as conn:
        # The backend's change fails: its transaction, outbox row included, is undone.
        with conn.transaction(force_rollback=True):
            enqueue(conn, event("pt_e", "ap_rolled_back"))
        with conn.transaction():
            row_id = enqueue(conn, event("pt_e", "ap_kept"), idempotency_key="ap_kept-v1")
        rows = conn.execute("SELECT id, event, idempotency_key FROM notify_outbox").fetchall()
    assert rows == [(row_id, json.loads(outbox_json(event("pt_e", "ap_kept"))), "ap_kept-v1")]


def test_enqueue_refuses_what_could_never_be_published(outbox_dsn: str) -> None:
    backwards = event("pt_e", starts_at="2026-12-01T15:00:00Z", ends_at="2026-12-01T14:00:00Z")
    with psycopg.connect(outbox_dsn) as conn:
        with pytest.raises(ValidationError):
            enqueue(conn, {**event("pt_e"), "occurred_at": 0})
        with pytest.raises(InvalidEventError):
            enqueue(conn, backwards)
        with pytest.raises(ValueError, match="idempotency_key"):
            enqueue(conn, event("pt_e"), idempotency_key="has spaces")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM notify_outbox").fetchone() == (0,)


async def test_async_enqueue_is_delivered_once(
    make_settings: SettingsFactory, outbox_dsn: str, tokens: Tokens
) -> None:
    settings = make_settings(outbox_dsn=outbox_dsn, outbox_relay_enabled=True)
    model = EventCreate.model_validate(event("pt_ae", "ap_async"))
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        open_sse(http, "/v1/patients/me/events", headers=bearer(tokens.patient("pt_ae"))) as sse,
        await psycopg.AsyncConnection.connect(outbox_dsn) as conn,
    ):
        await opened(sse)
        async with conn.transaction():
            await enqueue(conn, model, idempotency_key="ap_async-v1")
            # The same event twice under its key: one delivery.
            await enqueue(conn, model, idempotency_key="ap_async-v1")
        async with conn.transaction():
            await enqueue(conn, event("pt_ae", "ap_after"))
        await sse.wait_events(2)
    assert [f.json()["appointment_id"] for f in sse.of_type()] == ["ap_async", "ap_after"]
