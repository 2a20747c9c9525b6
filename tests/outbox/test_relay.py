"""The outbox as a clinic backend uses it: rows written with plain SQL in the
backend's own transaction reach the patient's open SSE stream through the relay
(here the one `notify serve` runs with NOTIFY_OUTBOX_RELAY_ENABLED=true), once, in
order; rolled-back rows never; poison rows are set aside without blocking."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import httpx
import psycopg

from service import metrics
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import run_app, settings_env
from tests.support.events import event
from tests.support.outbox import insert, numbered_event
from tests.support.sse import SSEStream, open_sse, opened
from tests.support.waiting import eventually


def appointment_ids(stream: SSEStream) -> list[str]:
    return [frame.json()["appointment_id"] for frame in stream.of_type()]


async def test_rollback_publishes_nothing_commit_is_delivered_once(
    make_settings: SettingsFactory, outbox_dsn: str, tokens: Tokens
) -> None:
    settings = make_settings(outbox_dsn=outbox_dsn, outbox_relay_enabled=True)
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        open_sse(http, "/v1/patients/me/events", headers=bearer(tokens.patient("pt_a"))) as sse,
        await psycopg.AsyncConnection.connect(outbox_dsn, autocommit=True) as backend,
    ):
        await opened(sse)
        async with backend.transaction(force_rollback=True):
            await insert(backend, event("pt_a", "ap_rolled_back"))
        async with backend.transaction():
            committed_id = await insert(backend, event("pt_a", "ap_committed"))
        (frame,) = await sse.wait_events(1)
        assert frame.json()["appointment_id"] == "ap_committed"

        async def marked_with_the_id_the_client_saw() -> bool:
            cursor = await backend.execute(
                "SELECT published_id FROM notify_outbox WHERE id = %s", (committed_id,)
            )
            return await cursor.fetchone() == (frame.id,)

        await eventually(marked_with_the_id_the_client_saw, what="the row marked published")
        # Exactly once: a later row of the same patient arrives right after it,
        # with nothing in between (neither a repeat nor the rolled-back row).
        async with backend.transaction():
            await insert(backend, event("pt_a", "ap_after"))
        await sse.wait_events(2)
        assert appointment_ids(sse) == ["ap_committed", "ap_after"]
        cursor = await backend.execute("SELECT count(*) FROM notify_outbox")
        assert await cursor.fetchone() == (2,)


async def test_poison_rows_are_set_aside_and_rows_behind_them_flow(
    make_settings: SettingsFactory, outbox_dsn: str, tokens: Tokens
) -> None:
    settings = make_settings(outbox_dsn=outbox_dsn, outbox_relay_enabled=True)
    set_aside_before = metrics.OUTBOX_SET_ASIDE._value.get()
    unknown_type = {**event("pt_p", "ap_secret_name"), "type": "appointment.teleported"}
    broken_rule = event(
        "pt_p", "ap_rule", starts_at="2026-12-01T15:00:00Z", ends_at="2026-12-01T14:00:00Z"
    )
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        open_sse(http, "/v1/patients/me/events", headers=bearer(tokens.patient("pt_p"))) as sse,
        await psycopg.AsyncConnection.connect(outbox_dsn, autocommit=True) as backend,
    ):
        await opened(sse)
        async with backend.transaction():
            await insert(backend, numbered_event("pt_p", 1))
            poison_ids = [await insert(backend, unknown_type)]
            await insert(backend, numbered_event("pt_p", 2))
            poison_ids.append(await insert(backend, broken_rule))
            poison_ids.append(await insert(backend, numbered_event("pt_p", 3), "bad key"))
            await insert(backend, numbered_event("pt_p", 4))
            # One key, two events: the second can never be published. The same
            # event again under its key is a replay: stored and delivered once.
            first_of_key = await insert(backend, numbered_event("pt_p", 5), "dup-1")
            poison_ids.append(await insert(backend, numbered_event("pt_p", 6), "dup-1"))
            replay = await insert(backend, numbered_event("pt_p", 5), "dup-1")
            await insert(backend, numbered_event("pt_p", 7))
        await sse.wait_events(5)
        assert appointment_ids(sse) == ["ap_1", "ap_2", "ap_4", "ap_5", "ap_7"]

        async def batch_committed() -> bool:
            cursor = await backend.execute(
                "SELECT count(*) FROM notify_outbox WHERE published_at IS NULL"
            )
            return await cursor.fetchone() == (0,)

        await eventually(batch_committed, what="the relay's batch to commit")
        cursor = await backend.execute(
            "SELECT id, reason, error, event->>'appointment_id' FROM notify_outbox_dead ORDER BY id"
        )
        dead = await cursor.fetchall()
        cursor = await backend.execute(
            "SELECT count(DISTINCT published_id) FROM notify_outbox WHERE id = ANY(%s)",
            ([first_of_key, replay],),
        )
        assert await cursor.fetchone() == (1,)
    assert [row[0] for row in dead] == poison_ids
    assert [row[1] for row in dead] == [
        "invalid",
        "rule",
        "invalid_idempotency_key",
        "idempotency_key_reused",
    ]
    # The error says what is wrong, never the values (no PHI).
    assert "type" in json.loads(dead[0][2])[0]["loc"]
    assert all("secret_name" not in row[2] for row in dead)
    assert dead[0][3] == "ap_secret_name"  # the row itself is kept for a human
    assert metrics.OUTBOX_SET_ASIDE._value.get() - set_aside_before == 4


def test_migrate_is_idempotent_and_plain_sql_inserts_work(
    make_settings: SettingsFactory, postgres_server: Any
) -> None:
    with postgres_server.connect(autocommit=True) as conn:
        conn.execute("CREATE DATABASE migrate_twice")
    dsn = postgres_server.dsn.rsplit("/", 1)[0] + "/migrate_twice"
    env = settings_env(make_settings(outbox_dsn=dsn))
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", "outbox", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "password" not in done.stdout + done.stderr
    with psycopg.connect(dsn) as conn:
        # The documented statement; an id given by the caller is replaced.
        first = conn.execute(
            "INSERT INTO notify_outbox (id, event) VALUES (7, %s::jsonb) RETURNING id, patient_id",
            (json.dumps(event("pt_m")),),
        ).fetchone()
        second = conn.execute(
            "INSERT INTO notify_outbox (event, idempotency_key) VALUES (%s::jsonb, 'k-1') "
            "RETURNING id",
            (json.dumps(event("pt_m")),),
        ).fetchone()
    assert first is not None
    assert second is not None
    assert first[1] == "pt_m"
    assert second[0] > first[0]


def test_relay_refuses_to_start_without_a_dsn(make_settings: SettingsFactory) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "relay"],
        env=settings_env(make_settings()),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "NOTIFY_OUTBOX_DSN" in done.stderr


async def test_same_patient_writers_commit_in_id_order_and_a_lower_id_committing_late_is_not_skipped(
    make_settings: SettingsFactory, outbox_dsn: str, tokens: Tokens
) -> None:
    """Rows of one patient: a second writer waits at its INSERT until the first
    commits, so its id is drawn (and committed) after. Across patients a lower id
    commits after a higher one has been published: the relay still publishes it."""
    settings = make_settings(outbox_dsn=outbox_dsn, outbox_relay_enabled=True)
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        open_sse(http, "/v1/patients/me/events", headers=bearer(tokens.patient("pt_x"))) as x,
        open_sse(http, "/v1/patients/me/events", headers=bearer(tokens.patient("pt_y"))) as y,
        await psycopg.AsyncConnection.connect(outbox_dsn, autocommit=True) as first,
        await psycopg.AsyncConnection.connect(outbox_dsn, autocommit=True) as second,
        await psycopg.AsyncConnection.connect(outbox_dsn, autocommit=True) as other,
        await psycopg.AsyncConnection.connect(outbox_dsn, autocommit=True) as observer,
    ):
        await opened(x)
        await opened(y)
        await first.execute("BEGIN")
        low_id = await insert(first, event("pt_x", "ap_first"))
        # Another patient's row takes a higher id and commits first: published.
        async with other.transaction():
            high_id = await insert(other, event("pt_y", "ap_other"))
        assert high_id > low_id
        await y.wait_events(1)
        # A second writer for pt_x waits for the first one's COMMIT.
        await second.execute("BEGIN")
        second_insert = asyncio.create_task(insert(second, event("pt_x", "ap_second")))

        async def second_waits_on_the_patient_lock() -> bool:
            cursor = await observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'"
            )
            row = await cursor.fetchone()
            return row is not None and row[0] == 1

        await eventually(second_waits_on_the_patient_lock, what="the second writer to wait")
        assert not second_insert.done()
        await first.execute("COMMIT")
        second_id = await asyncio.wait_for(second_insert, 10)
        await second.execute("COMMIT")
        assert second_id > high_id > low_id
        await x.wait_events(2)
        assert appointment_ids(x) == ["ap_first", "ap_second"]
        assert appointment_ids(y) == ["ap_other"]


async def test_a_commit_wakes_the_relay_through_listen_notify(
    make_settings: SettingsFactory, outbox_dsn: str, tokens: Tokens
) -> None:
    """Polling once a minute: a row committed now arrives well before the next
    poll could fetch it, because the commit's NOTIFY woke the relay."""
    settings = make_settings(
        outbox_dsn=outbox_dsn, outbox_relay_enabled=True, outbox_poll_interval_s=60
    )
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        open_sse(http, "/v1/patients/me/events", headers=bearer(tokens.patient("pt_n"))) as sse,
        await psycopg.AsyncConnection.connect(outbox_dsn, autocommit=True) as backend,
    ):
        await opened(sse)

        async def listening() -> bool:
            cursor = await backend.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN notify_outbox'"
            )
            return await cursor.fetchone() == (1,)

        await eventually(listening, what="the relay's LISTEN")
        async with backend.transaction():
            await insert(backend, event("pt_n", "ap_woken"))
        (frame,) = await sse.wait_events(1, timeout_s=20)
        assert frame.json()["appointment_id"] == "ap_woken"


async def test_polling_finds_rows_whose_notification_never_came(
    make_settings: SettingsFactory, outbox_dsn: str, tokens: Tokens
) -> None:
    """The safety net: with the NOTIFY trigger disabled, rows still flow."""
    settings = make_settings(
        outbox_dsn=outbox_dsn, outbox_relay_enabled=True, outbox_poll_interval_s=0.2
    )
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        open_sse(http, "/v1/patients/me/events", headers=bearer(tokens.patient("pt_q"))) as sse,
        await psycopg.AsyncConnection.connect(outbox_dsn, autocommit=True) as backend,
    ):
        await opened(sse)
        await backend.execute(
            "ALTER TABLE notify_outbox DISABLE TRIGGER notify_outbox_after_insert"
        )
        async with backend.transaction():
            await insert(backend, numbered_event("pt_q", 1))
            await insert(backend, numbered_event("pt_q", 2))
        await sse.wait_events(2)
        assert appointment_ids(sse) == ["ap_1", "ap_2"]
