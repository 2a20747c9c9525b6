"""The README's outbox blocks (the SQL transaction, the Python `enqueue`), run
exactly as printed, reach the patient's stream, in order."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg

from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import run_app
from tests.support.sse import open_sse, opened

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- the block below is run by tests/outbox/test_readme.py -->"


def marked_blocks() -> dict[str, str]:
    """The blocks right after the marker, by language."""
    text = README.read_text()
    blocks = {}
    for part in text.split(MARKER)[1:]:
        found = re.match(r"\s*```(\w+)\n(.*?)```", part, re.S)
        assert found is not None, "a code block after the marker"
        blocks[found.group(1)] = found.group(2)
    assert set(blocks) == {"sql", "python"}
    return blocks


def run_python(code: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "NOTIFY_OUTBOX_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_readme_outbox_transaction_is_delivered(
    make_settings: SettingsFactory, outbox_dsn: str, tokens: Tokens
) -> None:
    settings = make_settings(outbox_dsn=outbox_dsn, outbox_relay_enabled=True)
    async with await psycopg.AsyncConnection.connect(outbox_dsn, autocommit=True) as backend:
        # The clinic's own table that the example transaction changes.
        await backend.execute(
            "CREATE TABLE appointments (id text PRIMARY KEY, starts_at timestamptz, status text)"
        )
        await backend.execute("INSERT INTO appointments VALUES ('ap_19c2', now(), 'scheduled')")
        async with (
            run_app(settings) as app,
            httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
            open_sse(
                http, "/v1/patients/me/events", headers=bearer(tokens.patient("pt_8f3a"))
            ) as sse,
        ):
            await opened(sse)
            blocks = marked_blocks()
            await backend.execute(blocks["sql"].encode(), prepare=False)
            done = await asyncio.to_thread(run_python, blocks["python"], outbox_dsn)
            assert done.returncode == 0, done.stderr
            await sse.wait_events(2)
        cursor = await backend.execute("SELECT status FROM appointments")
        assert await cursor.fetchone() == ("cancelled",)
    rescheduled, cancelled = (frame.json() for frame in sse.of_type())
    assert (rescheduled["type"], rescheduled["appointment_id"]) == (
        "appointment.rescheduled",
        "ap_19c2",
    )
    assert rescheduled["data"]["starts_at"] == "2026-12-01T14:00:00Z"
    assert (cancelled["type"], cancelled["data"]["status"]) == (
        "appointment.cancelled",
        "cancelled",
    )
