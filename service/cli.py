"""`notify serve | publish | token | doctor | outbox migrate | relay`: run the service,
publish an event, mint a dev token, check the configured Redis topology, create the
PostgreSQL outbox table, relay its rows to Redis."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import uvicorn
from pydantic import ValidationError

from service.config import Settings, get_settings
from service.services.principal import Role, Scope
from service.services.tokens import mint_token
from service.transports.http_protocol import HttpProtocol
from service.transports.ws_protocol import WsProtocol
from service.workers import serve_workers


def _prepare_multiprocess_metrics(settings: Settings) -> None:
    """Several workers share one /metrics through prometheus-client's multiprocess
    mode, which needs a fresh directory named before any worker starts."""
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="notify-metrics-")


# The listen queue. A restart storm is every client of the process connecting
# within its `retry:` jitter: uvicorn's default (2048) overflowed with 5,000
# (10,634 `ListenOverflows` in one run), and each dropped SYN costs that client a
# 1 s (then 3 s, 7 s) TCP retransmit: most of the catch-up time (issue 15). The
# kernel caps it at `net.core.somaxconn` (4096 by default): raise that too.
LISTEN_BACKLOG = 16384


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn settings the service and its deploy files assume."""
    return {
        # Our logging set-up; uvicorn's access log prints query strings (tickets).
        "log_config": None,
        "access_log": False,
        "proxy_headers": settings.proxy_headers,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "timeout_keep_alive": settings.keepalive_timeout_s,
        # uvicorn must give up on open connections before Kubernetes' SIGKILL: our
        # drain needs the grace window, uvicorn gets a little more to finish writing.
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s) + 2,
        # httptools, minus its cycle per WebSocket upgrade, plus a header deadline
        # (service/transports/http_protocol.py). A partial of a module-level class pickles, so
        # it reaches every worker process.
        "http": functools.partial(HttpProtocol, header_timeout_s=settings.header_timeout_s),
        # websockets' sans-I/O protocol, able to reset a stalled connection.
        "ws": WsProtocol,
        "ws_ping_interval": settings.ws_ping_interval_s,
        "ws_ping_timeout": settings.ws_ping_timeout_s,
        "ws_max_size": settings.ws_max_message_bytes,
        "ws_per_message_deflate": settings.ws_per_message_deflate,
        "server_header": False,
        "backlog": LISTEN_BACKLOG,
    }


def _serve(settings: Settings) -> int:
    _prepare_multiprocess_metrics(settings)
    app = "service.main:create_app"
    options = uvicorn_options(settings)
    if settings.workers == 1:
        uvicorn.run(app, factory=True, host=settings.host, port=settings.port, **options)
        return 0
    # Each worker on a listening socket of its own (service/workers.py).
    config = uvicorn.Config(
        app,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        **options,
    )
    serve_workers(config)
    return 0


def _token(settings: Settings, args: argparse.Namespace) -> int:
    if settings.env == "production":
        print("notify token mints development tokens only; refused in production.", file=sys.stderr)
        return 2
    secret = settings.jwt_hmac_secret()
    if secret is None:
        print("no HMAC secret configured (NOTIFY_JWT_SECRET)", file=sys.stderr)
        return 2
    print(
        mint_token(
            secret=secret,
            sub=args.sub,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            role=Role(args.role),
            scopes=args.scope.split() if args.scope else (),
            ttl_s=args.ttl_s,
        )
    )
    return 0


def _event_from_args(args: argparse.Namespace) -> dict[str, object]:
    if args.json:
        loaded: dict[str, object] = json.loads(args.json)
        return loaded
    data: dict[str, object] = {}
    for field in ("status", "starts_at", "ends_at", "location_id", "clinician_id"):
        value = getattr(args, field)
        if value is not None:
            data[field] = value
    return {
        "type": args.type,
        "patient_id": args.patient_id,
        "appointment_id": args.appointment_id,
        "occurred_at": args.occurred_at or datetime.now(UTC).isoformat(),
        "data": data,
    }


async def _publish_redis(
    settings: Settings, event_dict: dict[str, object], idempotency_key: str | None
) -> dict[str, object]:
    from notify_publisher.events import EventCreate
    from notify_publisher.keys import RedisKeys

    from service.brokers.factory import build_broker
    from service.services.publisher import publish

    keys = RedisKeys(settings.key_prefix)
    broker = build_broker(
        settings.redis_topology(),
        control_channel=keys.control,
        max_connections=2,
        pool_timeout_s=settings.redis_pool_timeout_s,
        socket_timeout_s=settings.redis_socket_timeout_s,
    )
    try:
        # Connects and refuses a Redis of another kind than NOTIFY_REDIS_MODE.
        await broker.start()
        stored = await publish(
            broker=broker,
            keys=keys,
            event=EventCreate.model_validate(event_dict),
            history_maxlen=settings.history_maxlen,
            history_ttl_s=settings.history_ttl_s,
            idempotency_key=idempotency_key,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            durability=settings.durability(),
        )
    finally:
        await broker.stop()
    result: dict[str, object] = json.loads(stored.event.model_dump_json(exclude_none=True))
    return result


def _publish_http(
    settings: Settings, event_dict: dict[str, object], url: str, idempotency_key: str | None
) -> dict[str, object]:
    """With the memory broker the events live in the server process: go through its API."""
    secret = settings.jwt_hmac_secret()
    if secret is None:
        raise SystemExit("no HMAC secret to mint a service token; use --url with a Redis broker")
    token = mint_token(
        secret=secret,
        sub="svc_cli",
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        role=Role.SERVICE,
        scopes=[Scope.EVENTS_PUBLISH],
        ttl_s=60,
    )
    headers = {"Authorization": f"Bearer {token}"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    response = httpx.post(
        f"{url.rstrip('/')}/v1/events", json=event_dict, headers=headers, timeout=10
    )
    if response.status_code != 201:
        raise SystemExit(f"publish failed: HTTP {response.status_code} {response.text}")
    result: dict[str, object] = response.json()
    return result


def _publish(settings: Settings, args: argparse.Namespace) -> int:
    from service.failures import BrokerTopologyError
    from service.services.errors import DomainError

    event_dict = _event_from_args(args)
    try:
        if settings.uses_memory_broker or args.url:
            url = args.url or f"http://{settings.host}:{settings.port}"
            stored = _publish_http(settings, event_dict, url, args.idempotency_key)
        else:
            stored = asyncio.run(_publish_redis(settings, event_dict, args.idempotency_key))
    except ValidationError as exc:
        print(f"invalid event: {exc}", file=sys.stderr)
        return 2
    except DomainError as exc:
        print(f"not published: {exc.public_message}", file=sys.stderr)
        return 1
    except BrokerTopologyError as exc:
        print(f"not published: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(stored))
    return 0


def _doctor(settings: Settings) -> int:
    """Which topology the settings reach and whether every node answers; exit 1
    on any problem (usable as an init container or a deploy check)."""
    if settings.uses_memory_broker:
        print("configured: memory:// (one process, development only): no Redis to check")
        return 0
    from service.brokers.doctor import diagnose

    report = asyncio.run(diagnose(settings.redis_topology()))
    print(report.render())
    return 0 if report.ok else 1


def _outbox_migrate(settings: Settings) -> int:
    import psycopg

    from service.outbox.schema import migrate

    if settings.outbox_dsn is None:
        print("notify outbox migrate needs NOTIFY_OUTBOX_DSN (postgresql://...)", file=sys.stderr)
        return 2
    try:
        migrate(settings.outbox_dsn.get_secret_value())
    except psycopg.Error as exc:
        # The class and SQLSTATE only: the message may name the host or the user.
        print(f"migration failed: {type(exc).__name__} {exc.sqlstate or ''}", file=sys.stderr)
        return 1
    print("notify_outbox is up to date")
    return 0


def _relay(settings: Settings) -> int:
    from service.logging import configure_logging
    from service.outbox.runner import run_relay

    if settings.outbox_dsn is None:
        print("notify relay needs NOTIFY_OUTBOX_DSN (postgresql://...)", file=sys.stderr)
        return 2
    if settings.uses_memory_broker:
        print("notify relay publishes to Redis: set NOTIFY_REDIS_URL", file=sys.stderr)
        return 2
    configure_logging(fmt=settings.effective_log_format, level=settings.log_level)
    asyncio.run(run_relay(settings))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notify", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the service (uvicorn) with NOTIFY_* settings")

    token = commands.add_parser("token", help="mint a development token (not in production)")
    token.add_argument("--sub", required=True, help="subject: the patient id for patients")
    token.add_argument("--role", default="patient", choices=[r.value for r in Role])
    token.add_argument("--scope", default="", help='space-separated, e.g. "events:publish"')
    token.add_argument("--ttl-s", type=int, default=3600)

    commands.add_parser(
        "doctor", help="which Redis topology NOTIFY_REDIS_* reach, and whether every node answers"
    )

    outbox = commands.add_parser("outbox", help="the PostgreSQL outbox (NOTIFY_OUTBOX_DSN)")
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True)
    outbox_commands.add_parser(
        "migrate", help="create or update notify_outbox (idempotent; service/outbox/schema.sql)"
    )
    commands.add_parser(
        "relay",
        help="publish notify_outbox rows to Redis; probes and /metrics on NOTIFY_HOST:NOTIFY_PORT",
    )

    pub = commands.add_parser("publish", help="publish an event (history + live)")
    pub.add_argument("--json", help="the whole event as JSON (overrides the other flags)")
    pub.add_argument("--patient-id")
    pub.add_argument("--appointment-id")
    pub.add_argument("--type", default="appointment.updated")
    pub.add_argument("--occurred-at")
    pub.add_argument("--status")
    pub.add_argument("--starts-at")
    pub.add_argument("--ends-at")
    pub.add_argument("--location-id")
    pub.add_argument("--clinician-id")
    pub.add_argument(
        "--url", help="publish through this server's HTTP API (default with memory://)"
    )
    pub.add_argument(
        "--idempotency-key",
        help="names the event: publishing again with the same key stores nothing new",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(settings)
    if args.command == "token":
        return _token(settings, args)
    if args.command == "doctor":
        return _doctor(settings)
    if args.command == "outbox":
        return _outbox_migrate(settings)
    if args.command == "relay":
        return _relay(settings)
    if not args.json and not (args.patient_id and args.appointment_id):
        print("publish needs --json or --patient-id and --appointment-id", file=sys.stderr)
        return 2
    return _publish(settings, args)


if __name__ == "__main__":
    sys.exit(main())
