"""The relay process' HTTP face: `/health/live`, `/health/ready` and `/metrics` on
`NOTIFY_HOST:NOTIFY_PORT`, for Kubernetes probes and Prometheus. Three fixed GET
routes need no web framework: a minimal HTTP/1.1 responder that closes after
each answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.metrics_core import Metric

# A probe's request line and headers fit in far less; anything longer is refused.
MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_S = 5.0


# The families that mean something in a relay process: its own, the Redis failures of
# its publishes, and the process' own. service/metrics.py defines notify serve's too
# (open streams, the pub/sub listener ...), which would read 0 here: a relay pod
# would count as a pod whose listener is down, and NotifyRedisListenerDown
# (deploy/prometheus) would page for every relay pod.
RELAY_FAMILIES = (
    "notify_outbox_",
    "notify_redis_errors",
    "notify_redis_refusals",
    "process_",
    "python_",
)


class RelayMetrics:
    """The default registry, narrowed to `RELAY_FAMILIES` (a prometheus_client collector)."""

    def collect(self) -> list[Metric]:
        return [m for m in REGISTRY.collect() if m.name.startswith(RELAY_FAMILIES)]


class ProbeServer:
    """Serves the probes from `status()`: (ready, details for the body)."""

    def __init__(self, status: Callable[[], tuple[bool, dict[str, object]]]) -> None:
        self._status = status
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _answer(self, path: str) -> tuple[int, str, bytes]:
        if path == "/health/live":
            return 200, "application/json", b'{"status":"alive"}'
        if path == "/health/ready":
            ready, details = self._status()
            body = json.dumps({"status": "ready" if ready else "not_ready", **details})
            return (200 if ready else 503), "application/json", body.encode()
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(RelayMetrics())
        return 404, "application/json", b'{"detail":"not found"}'

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "application/json", b'{"detail":"method not allowed"}'
            else:
                status, ctype, body = self._answer(path)
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(
                status, "Service Unavailable"
            )
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode("latin-1")
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
