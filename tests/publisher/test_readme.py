"""README, "Publishing from a backend": every python and sh block of the section
runs exactly as printed against a Redis of the test's own, while a patient's
stream is open; what the blocks store arrives with its id, the raw PUBLISH
without one."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import run_app
from tests.support.redis_server import RedisServer
from tests.support.sse import open_sse, opened

ROOT = Path(__file__).resolve().parents[2]
SECTION = "### Publishing from a backend\n"


def section_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION) + len(SECTION)
    end = re.search(r"^##", text[start:], re.M)
    assert end is not None
    section = text[start : start + end.start()]
    return re.findall(r"^```(python|sh)\n(.*?)^```$", section, re.M | re.S)


def run_block(kind: str, code: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    # The publisher reads the variables a backend's deployment sets.
    env = {**os.environ, "NOTIFY_REDIS_URL": redis_url}
    command = (
        [sys.executable, "-c", code]
        if kind == "python"
        else ["bash", "-euo", "pipefail", "-c", code]
    )
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_section_has_the_examples_it_promises() -> None:
    blocks = section_blocks()
    kinds = [kind for kind, _ in blocks]
    assert kinds.count("python") == 2
    assert sum("--eval" in code for _, code in blocks) == 2
    text = "".join(code for _, code in blocks)
    assert "SyncPublisher" in text
    assert "Publisher.from_env" in text
    # The old internals example is gone for good.
    assert "service." not in text


async def test_every_block_runs_and_a_connected_client_receives_the_events(
    own_redis: RedisServer, make_settings: SettingsFactory, tokens: Tokens
) -> None:
    # The README names the default prefix: the Redis is the test's own.
    settings = make_settings(redis_url=own_redis.url, key_prefix="notify:")
    outputs: list[str] = []
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        open_sse(http, "/v1/patients/me/events", headers=bearer(tokens.patient("pt_8f3a"))) as sse,
    ):
        await opened(sse)
        for kind, code in section_blocks():
            done = await asyncio.to_thread(run_block, kind, code, own_redis.url)
            assert done.returncode == 0, f"{kind} block failed:\n{code}\n{done.stderr}"
            outputs.append(done.stdout)
        frames = await sse.wait_events(6)
    received = [frame.json() for frame in frames]
    assert [e["type"] for e in received] == [
        "appointment.rescheduled",
        "appointment.reminder",
        "appointment.checked_in",
        "appointment.cancelled",
        "appointment.note_added",
        "appointment.updated",
    ]
    # Each stored event arrived with the id its publisher printed; the raw
    # PUBLISH has none (it cannot be resumed).
    printed = "\n".join(outputs)
    for event in received[:5]:
        assert event["id"] in printed
    assert "id" not in received[5]
    client = own_redis.client()
    try:
        assert client.xlen("notify:history:{pt_8f3a}") == 5
    finally:
        client.close()


async def test_the_raw_script_with_a_key_replays(own_redis: RedisServer) -> None:
    """The idempotent `redis-cli --eval` example, run twice: one entry, one id."""
    (block,) = [code for _, code in section_blocks() if "idempotency:" in code]
    first = await asyncio.to_thread(run_block, "sh", block, own_redis.url)
    again = await asyncio.to_thread(run_block, "sh", block, own_redis.url)
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    first_id, status, _ = first.stdout.split("\n", 2)
    assert status == "stored"
    assert again.stdout.split("\n")[:2] == [first_id, "replayed"]
    client = own_redis.client()
    try:
        assert client.xlen("notify:history:{pt_8f3a}") == 1
    finally:
        client.close()
