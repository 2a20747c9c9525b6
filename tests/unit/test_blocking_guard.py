"""The guard in tests/conftest.py fails an async test that blocks its event loop,
whether asleep in a blocking call or busy on the CPU, and lets through a test
whose loop only waited for a CPU on a loaded machine (its spinning callback takes
longer than the threshold in wall time, under it on the CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest_plugins = ["pytester"]

BLOCKING = """
import time

async def test_sleeps_in_the_loop():
    time.sleep(0.7)

async def test_spins_in_the_loop():
    # 0.7 s of CPU, however long a loaded machine makes it take.
    end = time.thread_time() + 0.7
    while time.thread_time() < end:
        pass

async def test_awaits():
    import asyncio
    await asyncio.sleep(0.7)

async def test_shares_its_cpu_with_busy_processes():
    # Two processes spin on this test's CPU: the callback gets about a third of
    # it, so 0.75 s of wall time hold about 0.25 s of CPU and 0.5 s of waiting for
    # the CPU (a loaded machine, not a block). Over the threshold in wall time,
    # well under it without the wait.
    import os, subprocess, sys
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for spinner in spinners:
            os.sched_setaffinity(spinner.pid, {cpu})
        started, cpu_before = time.perf_counter(), time.thread_time()
        while time.perf_counter() - started < 0.75:
            pass
        assert time.thread_time() - cpu_before < 0.45  # the spinners did take the CPU
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
"""


def test_blocking_calls_fail_the_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_blocking=BLOCKING)
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_debug = true\nasyncio_default_fixture_loop_scope = function\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the conftest imports tests.support
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*event loop blocked*"])
