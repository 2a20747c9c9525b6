"""Split probes: liveness never checks dependencies (a Redis blip must not restart
every pod); readiness does, so the load balancer stops sending new streams."""

from __future__ import annotations

import asyncio
import os

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.responses import JSONResponse, Response

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
    """Redis answers PING in time, the listener is subscribed, not draining, not saturated."""
    broker_ok = True
    try:
        await asyncio.wait_for(state.broker.ping(), state.settings.redis_health_timeout_s)
    except (UnavailableError, TimeoutError):
        broker_ok = False
    listener_up = state.broker.listener_up and state.supervisor.healthy
    saturated = state.limiter.saturated
    is_ready = broker_ok and listener_up and not state.draining and not saturated
    body = ReadyResponse(
        status="ready" if is_ready else "not_ready",
        broker="ok" if broker_ok else "unreachable",
        listener="up" if listener_up else "down",
        draining=state.draining,
        saturated=saturated,
    )
    return JSONResponse(body.model_dump(), status_code=200 if is_ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint() -> Response:
    """Prometheus exposition (all workers' series in multiprocess mode)."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
