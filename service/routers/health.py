"""Split probes: liveness never checks dependencies (a Redis blip must not restart
every pod); readiness does, so the load balancer stops sending new streams."""

from __future__ import annotations

import asyncio
import os
from typing import Final, Literal

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.responses import JSONResponse, Response

from service import metrics
from service.brokers.refusals import OTHER, REFUSALS
from service.deps.state import StateDep
from service.schemas.health import LiveResponse, ReadyResponse
from service.services.errors import UnavailableError

router = APIRouter(tags=["operations"])


@router.get("/health/live", response_model=LiveResponse)
async def live() -> LiveResponse:
    """The process answers."""
    return LiveResponse()


@router.get(
    "/health/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}}
)
async def ready(state: StateDep) -> JSONResponse:
    """Redis answers PING in time, the listener is subscribed, not draining, not
    saturated. In Cluster, some shards down is "degraded" but still 200."""
    timeout_s = state.settings.redis_health_timeout_s
    broker_ok = True
    try:
        await asyncio.wait_for(state.broker.ping(), timeout_s)
    except (UnavailableError, TimeoutError):
        broker_ok = False
    shards_down, shards = await state.broker.shards_down(timeout_s)
    listener_up = state.broker.listener_up and state.supervisor.healthy
    saturated = state.limiter.saturated
    is_ready = broker_ok and listener_up and not state.draining and not saturated
    causes = state.broker.recent_refusals()
    if shards_down:
        causes.insert(0, SHARDS_DOWN_CAUSE)
    publish_degraded(causes)
    status: Literal["ready", "degraded", "not_ready"] = "ready" if is_ready else "not_ready"
    if is_ready and causes:
        status = "degraded"
    body = ReadyResponse(
        status=status,
        broker="ok" if broker_ok else "unreachable",
        listener="up" if listener_up else "down",
        draining=state.draining,
        saturated=saturated,
        redis_shards=shards,
        redis_shards_down=shards_down,
        causes=causes,
    )
    return JSONResponse(body.model_dump(), status_code=200 if is_ready else 503)


SHARDS_DOWN_CAUSE: Final = "redis_shards_down"
_degraded_causes: set[str] = set()


def _export_zero_series() -> None:
    """Every cause readiness can report exists from the start, at 0 (see
    service/metrics.py): a dashboard shows 0, not nothing, and an alert can tell."""
    for refusal in (*REFUSALS.values(), OTHER):
        metrics.READY_DEGRADED.labels(cause=refusal.cause)
    metrics.READY_DEGRADED.labels(cause=SHARDS_DOWN_CAUSE)


_export_zero_series()


def publish_degraded(causes: list[str]) -> None:
    """`notify_ready_degraded{cause}`: 1 for each current cause, 0 for the causes
    that were set before and have cleared (the label set stays bounded: the
    refusal codes and `redis_shards_down`)."""
    for cause in _degraded_causes - set(causes):
        metrics.READY_DEGRADED.labels(cause=cause).set(0)
    for cause in causes:
        metrics.READY_DEGRADED.labels(cause=cause).set(1)
    _degraded_causes.update(causes)


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint() -> Response:
    """Prometheus exposition (all workers' series in multiprocess mode)."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
