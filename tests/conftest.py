"""Shared fixtures: our own Redis servers, settings per test, tokens, and a guard
that fails any async test whose event loop was blocked."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.support import socket_origins
from tests.support.app_server import RunningApp, run_app
from tests.support.redis_server import RedisServer
from tests.support.redis_topologies import LocalCluster

# Re-exported: many tests import them from here.
from tests.support.tokens import Tokens as Tokens
from tests.support.tokens import bearer as bearer

# A callback holding the loop longer than this is a blocking call in async code.
SLOW_CALLBACK_S = 0.5


# On a loaded machine a callback can take 0.5 s of wall time without blocking: its
# thread was runnable but waited for a CPU (seen: 2.2 s at a load of 10 on 2 cores).
# The kernel counts that wait per thread (schedstat's second field), so the guard
# subtracts it: what remains is time on the CPU or asleep in a blocking call, which
# is what the guard is for.
_loop_thread = threading.local()


def _runqueue_wait_s() -> float:
    fd: int | None = getattr(_loop_thread, "schedstat", None)
    if fd is None:
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        _loop_thread.schedstat = fd
    return int(os.pread(fd, 64, 0).split()[1]) / 1e9


_run_handle = asyncio.events.Handle._run


def _run_handle_noting_the_wait(self: asyncio.events.Handle) -> None:
    if self._loop.get_debug():  # type: ignore[attr-defined]
        _loop_thread.waited_before = _runqueue_wait_s()
    _run_handle(self)


asyncio.events.Handle._run = _run_handle_noting_the_wait  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server for the session; tests isolate themselves by key prefix."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """One Redis Cluster for the session (3 primaries, a replica each); tests
    isolate themselves by key prefix. Fault tests start clusters of their own."""
    cluster = LocalCluster()
    cluster.start()
    yield cluster
    cluster.stop()


# Behaviour tests (tests/api, tests/integration) run against both; fault tests
# that stop their own standalone server (`own_redis`) and tests marked
# `own_topology` run against standalone only.
TOPOLOGIES = ("standalone", "cluster")
BEHAVIOUR_DIRS = ("api", "integration")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "redis_topology" not in metafunc.fixturenames:
        return
    path = Path(str(metafunc.definition.path))
    in_behaviour = any(part in BEHAVIOUR_DIRS for part in path.parts[-3:-1])
    if (
        in_behaviour
        and "own_redis" not in metafunc.fixturenames
        and metafunc.definition.get_closest_marker("own_topology") is None
    ):
        metafunc.parametrize("redis_topology", TOPOLOGIES, indirect=True)


@pytest.fixture
def redis_topology(request: pytest.FixtureRequest) -> str:
    """ "standalone" or "cluster": the Redis this test's settings point at."""
    return str(getattr(request, "param", "standalone"))


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of the test's own, free to be stopped, killed and restarted."""
    server = RedisServer()
    server.start()
    yield server
    server.stop(kill=True)


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(request: pytest.FixtureRequest, redis_topology: str) -> SettingsFactory:
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    target: dict[str, Any]
    if redis_topology == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        target = {"redis_url": cluster.url, "redis_mode": "cluster"}
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        target = {"redis_url": server.url}

    def factory(**overrides: Any) -> Settings:
        base = dict(target)
        if "redis_url" in overrides and "redis_mode" not in overrides:
            # A test pointing at a server of its own (own_redis) means standalone.
            base.pop("redis_mode", None)
        values: dict[str, Any] = {
            "env": "test",
            **base,
            "key_prefix": prefix,
            "heartbeat_s": 1.0,
            "shutdown_grace_s": 3.0,
            "log_format": "json",
            "log_level": "info",
            # The test process hosts many apps in turn: keep its collector as is.
            "gc_tuning": False,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return factory


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


@pytest.fixture
def tokens() -> Tokens:
    return Tokens()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[RunningApp]:
    """The real app under uvicorn in this test's event loop."""
    async with run_app(settings) as running:
        yield running


class _SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "took" in message and ("Executing" in message or "callback" in message.lower()):
            took = re.search(r"took ([0-9.]+) seconds", message)
            waited = _runqueue_wait_s() - getattr(_loop_thread, "waited_before", 0.0)
            if took is None or float(took[1]) - waited >= SLOW_CALLBACK_S:
                self.records.append(f"{message} ({waited:.3f} s of it waiting for a CPU)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Fail an async test during which the event loop was blocked (asyncio's debug
    mode logs every callback that ran longer than `SLOW_CALLBACK_S`)."""
    if not asyncio.iscoroutinefunction(getattr(item, "function", None)):
        return (yield)
    handler = _SlowCallbacks()
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(handler)
    try:
        result = yield
    finally:
        asyncio_logger.removeHandler(handler)
    if handler.records:
        raise AssertionError(f"event loop blocked: {handler.records}")
    return result


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """After pytest's own unraisable hook is in place: a socket collected unclosed
    is reported with where it was opened (`tests/support/socket_origins.py`)."""
    socket_origins.install()


def _debug_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK_S
    return loop


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Every async test runs on a debug loop: slow callbacks get logged (and fail
    the test through `_no_blocking_calls`)."""
    return {"debug_loop": _debug_loop}
