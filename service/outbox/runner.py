"""`notify relay`: the relay as a process of its own (one per pod), with its probes
and metrics; Redis or PostgreSQL away at start-up is retried like later, never
fatal. SIGTERM ends it at once: an unfinished batch rolls back and is published
again (idempotently) by the next relay."""

from __future__ import annotations

import asyncio
import signal

import structlog
from notify_publisher.keys import RedisKeys

from service.brokers.base import Broker
from service.brokers.factory import build_broker
from service.config import Settings
from service.failures import BrokerUnavailableError
from service.outbox.probes import ProbeServer
from service.outbox.publishing import ServicePublish
from service.outbox.relay import Backoff, OutboxRelay, RelayConfig

log = structlog.get_logger(__name__)


def relay_config(settings: Settings) -> RelayConfig:
    return RelayConfig(
        batch_size=settings.outbox_batch_size,
        publish_concurrency=settings.outbox_publish_concurrency,
        poll_interval_s=settings.outbox_poll_interval_s,
        retention_s=settings.outbox_retention_s,
    )


def build_relay(settings: Settings, broker: Broker, keys: RedisKeys) -> OutboxRelay:
    assert settings.outbox_dsn is not None
    return OutboxRelay(
        dsn=settings.outbox_dsn.get_secret_value(),
        publish=ServicePublish(
            broker=broker,
            keys=keys,
            history_maxlen=settings.history_maxlen,
            history_ttl_s=settings.history_ttl_s,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            durability=settings.durability(),
        ),
        config=relay_config(settings),
    )


async def _start_broker(broker: Broker, settings: Settings) -> None:
    """Connect to Redis, retrying while it is unreachable (a topology mismatch is a
    configuration error and ends the process)."""
    backoff = Backoff(0.2, 10.0)
    while True:
        try:
            await broker.start()
        except BrokerUnavailableError:
            delay = backoff.next_delay()
            log.warning(
                "redis_unreachable",
                redis=settings.redis_topology().describe(),
                retry_in_s=round(delay, 2),
            )
            await asyncio.sleep(delay)
        else:
            return


async def _connect_then_relay(
    broker: Broker, settings: Settings, relay: OutboxRelay, connected: asyncio.Event
) -> None:
    await _start_broker(broker, settings)
    connected.set()
    await relay.run()


async def run_relay(settings: Settings) -> None:
    keys = RedisKeys(settings.key_prefix)
    broker = build_broker(
        settings.redis_topology(),
        control_channel=keys.control,
        # One connection per publish pipeline in flight, and one spare.
        max_connections=settings.outbox_publish_concurrency + 1,
        pool_timeout_s=settings.redis_pool_timeout_s,
        socket_timeout_s=settings.redis_socket_timeout_s,
    )
    relay = build_relay(settings, broker, keys)
    redis_connected = asyncio.Event()

    def status() -> tuple[bool, dict[str, object]]:
        redis_ok = redis_connected.is_set() and relay.redis_ok
        details: dict[str, object] = {
            "database": "ok" if relay.database_ok else "unreachable",
            "redis": "ok" if redis_ok else "unreachable",
            "listening": relay.listening,
        }
        return redis_ok and relay.database_ok, details

    probes = ProbeServer(status)
    port = await probes.start(settings.host, settings.port)
    log.info("relay_started", port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    relaying = asyncio.create_task(_connect_then_relay(broker, settings, relay, redis_connected))
    stopping = asyncio.create_task(stop.wait())
    try:
        # The relay only returns by raising (a bug or a configuration error): the
        # process then exits non-zero and Kubernetes restarts it.
        await asyncio.wait({relaying, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (relaying, stopping):
            task.cancel()
        await asyncio.gather(relaying, stopping, return_exceptions=True)
        await probes.stop()
        await broker.stop()
        log.info("relay_stopped")
    if relaying.done() and not relaying.cancelled() and relaying.exception() is not None:
        raise RuntimeError("the outbox relay stopped") from relaying.exception()
