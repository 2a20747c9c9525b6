"""The README's outbox SQL, run exactly as printed, reaches the patient's stream."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import psycopg

from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import run_app
from tests.support.sse import open_sse, opened

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- the block below is run by tests/outbox/test_readme.py -->"


def readme_sql() -> str:
    text = README.read_text()
    after = text[text.index(MARKER) + len(MARKER) :]
    found = re.match(r"\s*```sql\n(.*?)```", after, re.S)
    assert found is not None, "the SQL block after the marker"
    return found.group(1)


async def test_the_readme_outbox_transaction_is_delivered(
    make_settings: SettingsFactory, outbox_dsn: str, tokens: Tokens
) -> None:
    settings = make_settings(outbox_dsn=outbox_dsn, outbox_relay_enabled=True)
    async with await psycopg.AsyncConnection.connect(outbox_dsn, autocommit=True) as backend:
        # The clinic's own table that the example transaction changes.
        await backend.execute(
            "CREATE TABLE appointments (id text PRIMARY KEY, starts_at timestamptz)"
        )
        await backend.execute("INSERT INTO appointments VALUES ('ap_19c2', now())")
        async with (
            run_app(settings) as app,
            httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
            open_sse(
                http, "/v1/patients/me/events", headers=bearer(tokens.patient("pt_8f3a"))
            ) as sse,
        ):
            await opened(sse)
            await backend.execute(readme_sql().encode(), prepare=False)
            (frame,) = await sse.wait_events(1)
    body = frame.json()
    assert (body["type"], body["appointment_id"]) == ("appointment.rescheduled", "ap_19c2")
    assert body["data"]["starts_at"] == "2026-12-01T14:00:00Z"
