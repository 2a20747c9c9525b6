"""Start-up and shutdown, in order.

Start: settings → logging → Redis (PING, fail fast) → listener → ready.
Stop (SIGTERM): readiness 503 at once → every stream told to reconnect, spread over
a jitter window → streams end → (uvicorn runs the lifespan shutdown) listener stops
→ pool closes. All inside `NOTIFY_SHUTDOWN_GRACE_S`.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from contextlib import asynccontextmanager, contextmanager

import structlog
from fastapi import FastAPI
from notify_publisher.keys import RedisKeys

from service.brokers.base import Broker, ReconnectHandler
from service.brokers.factory import build_broker
from service.brokers.memory import MemoryBroker
from service.config import Settings, get_settings
from service.failures import BrokerTopologyError, BrokerUnavailableError
from service.logging import configure_logging
from service.services.control import handle_control
from service.services.errors import UnavailableError
from service.services.history import HistoryReader
from service.services.hub import Hub
from service.services.keepalive import KeepAlive
from service.services.limits import ConnectionLimiter
from service.services.revocations import sweep_live_streams
from service.services.supervisor import Supervisor
from service.services.tickets import TicketStore
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
    hub = Hub(
        keys=keys,
        subscribe=broker.subscribe,
        unsubscribe=broker.unsubscribe,
        # Issue 15: the channels new in one loop iteration in one SUBSCRIBE.
        subscribe_many=broker.subscribe_many,
        backfill_reader=lambda pid, after, _timeout: history.read_all_after(pid, after),
    )
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
        keepalive=KeepAlive(
            heartbeat_s=settings.heartbeat_s, send_timeout_s=settings.send_timeout_s
        ),
    )


def _route_message(state: AppState) -> Callable[[str, bytes], None]:
    control = state.keys.control

    def on_message(channel: str, raw: bytes) -> None:
        if channel == control:
            # Revocations and ticket deletions (format: services/control.py).
            handle_control(state.hub, raw)
            return
        state.hub.on_message(channel, raw)

    return on_message


def _on_reconnect(state: AppState) -> ReconnectHandler:
    """After the listener (or one Cluster shard's connection) was away: backfill the
    missed events, then, if control messages may have been missed too, close the
    streams whose revocation or ticket deletion was announced meanwhile."""

    async def on_reconnect(channels: Collection[str] | None, sweep: bool) -> None:
        if channels is None or channels:
            await state.hub.backfill(channels)
        if not sweep:
            return
        try:
            await sweep_live_streams(
                hub=state.hub,
                broker=state.broker,
                keys=state.keys,
                tickets=TicketStore(broker=state.broker, keys=state.keys),
            )
        except UnavailableError:
            log.warning("revocation_sweep_failed")
        except Exception:
            # Never let the re-check take the listener down with it.
            log.exception("revocation_sweep_crashed")

    return on_reconnect


# After the last reconnect hint of a drain: time for the streams to close.
DRAIN_MARGIN_S = 1.0


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
        await state.broker.start(
            on_message=_route_message(state), on_reconnect=_on_reconnect(state)
        )
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
    if state.broker.has_listener:
        state.supervisor.spawn("pubsub-listener", state.broker.run_listener)
        if not await state.broker.wait_listening(LISTENER_START_TIMEOUT_S):
            await state.supervisor.stop(timeout_s=2)
            await state.broker.stop()
            raise RuntimeError("the Redis pub/sub listener did not start")
    state.supervisor.spawn("sse-keepalive", state.keepalive.run)
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
    # Every stream has had its reconnect hint by the end of the jitter window.
    drain_wait_s = min(
        settings.shutdown_grace_s,
        settings.shutdown_grace_s * settings.shutdown_jitter_fraction + DRAIN_MARGIN_S,
    )
    undo_signals = chain_exit_signals(
        state.begin_drain, lambda: state.wait_streams_closed(drain_wait_s)
    )
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
