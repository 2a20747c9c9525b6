"""The application factory: `uvicorn --factory service.main:create_app`."""

from __future__ import annotations

from fastapi import FastAPI
from notify_publisher.events import MAX_EVENT_BYTES
from starlette.middleware.cors import CORSMiddleware

from service.config import Settings, get_settings
from service.errors import install_error_handlers
from service.lifespan import lifespan
from service.middleware import RequestBodyLimitMiddleware, RequestContextMiddleware
from service.routers import (
    client,
    demo,
    docs,
    events,
    health,
    revocations,
    streams,
    tickets,
    ws,
)
from service.transports.lean_streams import LeanStreamRoutes, stream_routes


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Settings are read here only for what must be fixed before
    start-up (CORS); everything else is read by the lifespan."""
    app = FastAPI(
        title="Appointment notifications",
        version="0.1.0",
        lifespan=lifespan,
        # Observability is Prometheus (`/metrics`) and structlog. FastAPI's native
        # OpenTelemetry hook otherwise asks OpenTelemetry for its providers on every
        # request and WebSocket (reading the environment each time): a third of the
        # CPU of a connection storm in profiles.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # FastAPI's own pages load Swagger UI and ReDoc from a CDN: /docs serves
        # Swagger UI from this service instead (service/routers/docs.py).
        docs_url=None,
        redoc_url=None,
    )
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    cors_origins = (settings or get_settings()).cors_origins
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(streams.router)
    app.include_router(events.router)
    app.include_router(tickets.router)
    app.include_router(revocations.router)
    app.include_router(ws.router)
    app.include_router(client.router)
    app.include_router(demo.router)
    app.include_router(docs.router)
    # The SSE routes' opens without FastAPI's routing and dependency solving (the
    # same functions, answers and OpenAPI document: service/transports/lean_streams.py).
    app.add_middleware(LeanStreamRoutes, routes=stream_routes(streams.router.routes))
    # Every JSON body this API takes is at most one event (DESIGN.md, "Events").
    app.add_middleware(RequestBodyLimitMiddleware, max_bytes=MAX_EVENT_BYTES)
    app.add_middleware(RequestContextMiddleware)
    if cors_origins:
        # Outermost (added last): SSE bodies run from RequestContextMiddleware once
        # routing has unwound (`DEFERRED_STREAM`), so a CORS layer inside it never
        # sees their `http.response.start`, and a cross-origin EventSource fails.
        # Here it wraps every response: streams, retry-able refusals, 401s, 413s.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
            # Preflight answers cached by browsers for 10 minutes.
            max_age=600,
        )
    return app
