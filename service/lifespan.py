"""Start-up and shutdown, in order.

Start: settings → logging → Redis (PING, fail fast) → listener → ready.
Nothing is wired here: the broker appends what it receives to its inbox and the
hub's listener (`service/fanout/listener.py`) pulls it; this module only builds
the parts and starts and stops them in order.
Stop (SIGTERM): readiness 503 at once → every stream told to reconnect, spread over
a jitter window → streams end → (uvicorn runs the lifespan shutdown) listener stops
→ pool closes. All inside `NOTIFY_SHUTDOWN_GRACE_S`.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import structlog
from fastapi import FastAPI
from notify_publisher.keys import RedisKeys

from service.brokers.base import Broker
from service.brokers.factory import build_broker
from service.brokers.memory import MemoryBroker
from service.config import Settings, get_settings
from service.failures import BrokerTopologyError, BrokerUnavailableError
from service.fanout.clock import Clock
from service.fanout.hub import Hub
from service.fanout.listener import HubListener
from service.logging import configure_logging
from service.services.history import HistoryReader
from service.services.limits import ConnectionLimiter
from service.services.supervisor import Supervisor
from service.services.tokens import TokenConfig, TokenVerifier
from service.signals import chain_exit_signals
from service.state import AppState, LifespanState

log = structlog.get_logger(__name__)

# The listener must be subscribed before the process calls itself started.
LISTENER_START_TIMEOUT_S = 10.0


def build_state(settings: Settings) -> AppState:
    keys = RedisKeys(settings.key_prefix)
    broker: Broker
    if settings.uses_memory_broker:
        broker = MemoryBroker(control_channel=keys.control)
    else:
        broker = build_broker(
            settings.redis_topology(),
            control_channel=keys.control,
            max_connections=settings.redis_max_connections,
            pool_timeout_s=settings.redis_pool_timeout_s,
            socket_timeout_s=settings.redis_socket_timeout_s,
        )
    history = HistoryReader(broker=broker, keys=keys, page_size=settings.history_page)
    # Issue 15: the hub subscribes the channels new in one loop iteration with
    # one `subscribe_many`; it backfills from `history` after a resync.
    hub = Hub(keys=keys, broker=broker, history=history)
    verifier = TokenVerifier(
        TokenConfig(
            algorithms=tuple(settings.jwt_algorithms),
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway_s=settings.jwt_leeway_s,
            hmac_secret=settings.jwt_hmac_secret(),
            public_key=(
                settings.jwt_public_key.get_secret_value() if settings.jwt_public_key else None
            ),
            jwks_url=settings.jwt_jwks_url,
            jwks_cache_s=settings.jwt_jwks_cache_s,
        )
    )
    return AppState(
        settings=settings,
        keys=keys,
        broker=broker,
        hub=hub,
        history=history,
        verifier=verifier,
        limiter=ConnectionLimiter(
            max_total=settings.max_connections,
            max_per_subject=settings.max_connections_per_subject,
        ),
        supervisor=Supervisor(),
        clock=Clock(heartbeat_s=settings.heartbeat_s, send_timeout_s=settings.send_timeout_s),
    )


@contextmanager
def tuned_gc(settings: Settings) -> Iterator[None]:
    """Freeze the start-up heap and collect less often while serving; restore after."""
    if not settings.gc_tuning:
        yield
        return
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*settings.gc_thresholds)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[LifespanState]:
    settings_factory = app.dependency_overrides.get(get_settings, get_settings)
    settings: Settings = settings_factory()
    configure_logging(fmt=settings.effective_log_format, level=settings.log_level)
    state = build_state(settings)
    try:
        await state.broker.start()
    except BrokerTopologyError as exc:
        # One line that says what to change; the process must not serve (and say
        # "ready") on a Redis it cannot use.
        log.error("redis_topology_refused", reason=str(exc))
        await state.broker.stop()
        raise
    except BrokerUnavailableError as exc:
        log.error("redis_unreachable", reason=str(exc), redis=settings.redis_topology().describe())
        await state.broker.stop()
        raise
    except BaseException:
        # Start-up given up (cancelled) while Redis was asked: the pools close too.
        await state.broker.stop()
        raise
    try:
        undo_signals = await _start_serving(app, state, settings)
    except BaseException:
        # Whatever ends start-up from here (the listener never subscribing, a
        # cancellation, a failing part) stops what already runs: the listener's
        # pub/sub connection and the pools are closed, not left to the GC.
        await state.supervisor.stop(timeout_s=2)
        await state.broker.stop()
        raise
    log.info(
        "started",
        env=settings.env,
        broker="memory" if settings.uses_memory_broker else settings.redis_mode.value,
    )
    try:
        with tuned_gc(settings):
            yield {"notify": state}
    finally:
        undo_signals()
        state.begin_drain()
        await state.wait_streams_closed(settings.shutdown_grace_s)
        await state.supervisor.stop(timeout_s=5)
        await state.broker.stop()
        log.info("stopped")


async def _start_serving(app: FastAPI, state: AppState, settings: Settings) -> Callable[[], None]:
    """The supervised tasks, then the exit signals; what undoes the signals."""
    # The hub's listener pulls what the broker receives (and runs the broker's
    # connection loop, when it has one).
    listener = HubListener(broker=state.broker, hub=state.hub, keys=state.keys)
    state.supervisor.spawn("pubsub-listener", listener.run)
    if not await state.broker.wait_listening(LISTENER_START_TIMEOUT_S):
        raise RuntimeError("the Redis pub/sub listener did not start")
    state.supervisor.spawn("clock", state.clock.run)
    jwks = state.verifier.jwks
    if jwks is not None:
        # Fetches the keys now and every NOTIFY_JWT_JWKS_CACHE_S; an outage keeps
        # the cached ones (and is not fatal at start-up: requests then get 503).
        state.supervisor.spawn("jwks-refresher", jwks.run_refresher)
    if settings.outbox_relay_enabled:
        # Off by default (`notify relay` is the usual home). It shares the process'
        # Redis pool, so it publishes for at most a quarter of it at once.
        from service.outbox.runner import build_relay

        relay = build_relay(
            settings.model_copy(
                update={
                    "outbox_publish_concurrency": min(
                        settings.outbox_publish_concurrency,
                        max(1, settings.redis_max_connections // 4),
                    )
                }
            ),
            state.broker,
            state.keys,
        )
        state.supervisor.spawn("outbox-relay", relay.run)
    # Also on the app object, for operators' tooling and in-process tests.
    app.state.notify = state
    # Every stream has had its reconnect hint by the end of the jitter window; the
    # sends still stuck then are aborted (`AppState.finish_drain`).
    return chain_exit_signals(state.begin_drain, state.finish_drain)
