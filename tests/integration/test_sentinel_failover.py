"""Sentinel: a real primary, a replica and three Sentinels. The primary is killed
under publish load; the service follows the promoted replica by itself."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from service.config import Settings
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import run_app, settings_env
from tests.support.load import (
    assert_once_in_order,
    gaps,
    ids,
    publisher,
    received_all,
    wait_accepted,
)
from tests.support.metrics import metric
from tests.support.redis_topologies import LocalSentinel
from tests.support.sse import open_sse, opened
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.own_topology]

ME = "/v1/patients/me/events"


@pytest.fixture
def sentinel() -> Iterator[LocalSentinel]:
    group = LocalSentinel()
    group.start()
    yield group
    group.stop()


def sentinel_settings(make_settings: SettingsFactory, group: LocalSentinel) -> Settings:
    return make_settings(
        redis_url=None,
        redis_mode="sentinel",
        redis_sentinels=group.addresses,
        redis_sentinel_master=group.master_name,
    )


@contextlib.asynccontextmanager
async def readiness_log(http: httpx.AsyncClient) -> AsyncIterator[list[int]]:
    """Every /health/ready status seen while the block runs, in order."""
    seen: list[int] = []

    async def poll() -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                seen.append((await http.get("/health/ready", timeout=5)).status_code)
            # The probe's own period, as a kubelet's would be.
            await asyncio.sleep(0.05)

    task = asyncio.create_task(poll())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_primary_killed_under_load_the_service_follows_the_promoted_replica(
    sentinel: LocalSentinel, make_settings: SettingsFactory, tokens: Tokens
) -> None:
    settings = sentinel_settings(make_settings, sentinel)
    patient = "pt_sentinel"
    reconnects_before = metric("notify_listener_reconnects_total")
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=30) as http,
        open_sse(http, ME, headers=bearer(tokens.patient(patient))) as stream,
        publisher(settings, [patient]) as load,
        readiness_log(http) as statuses,
    ):
        await opened(stream)
        async with load.running():
            await wait_accepted(load, patient, 10)
            survivor = await asyncio.to_thread(sentinel.kill_primary)
            await asyncio.to_thread(sentinel.wait_failover, survivor)
            before = load.count(patient)
            await wait_accepted(load, patient, before + 20, timeout_s=30)
            after_promotion = load.accepted[patient][before:]
        # The listener resubscribed on the new primary: live events flow again.
        await received_all(stream, after_promotion, timeout_s=30)
        assert_once_in_order(stream)
        lost = set(load.accepted[patient]) - set(ids(stream))
        if lost:
            assert gaps(stream) >= 1, f"{len(lost)} accepted events lost in silence"
        assert metric("notify_listener_reconnects_total") > reconnects_before
        assert load.refused > 0  # publishes during the failover were refused (503), not lost

        # Readiness went 503 while the listener was away, and back to 200.
        await eventually(
            lambda: 503 in statuses and 200 in statuses[statuses.index(503) :],
            timeout_s=30,
            what="readiness 503 during the failover, then 200",
        )
    assert statuses[0] == 200


def test_doctor_finds_the_primary_through_the_sentinels(
    sentinel: LocalSentinel, make_settings: SettingsFactory
) -> None:
    settings = sentinel_settings(make_settings, sentinel)
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "doctor"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"found: Sentinel, 3/3 Sentinels answer, primary 'notifymaster' at "
        f"127.0.0.1:{sentinel.primary.port}"
    ) in result.stdout
    assert "1 replica(s) connected" in result.stdout
