"""Which Redis the service talks to, and how: the three topologies it supports.

- standalone: one server (`redis://`, `rediss://`, `unix://`), the default;
- sentinel: a primary found (and followed across failovers) through Sentinels;
- cluster: Redis Cluster, per-patient data and sharded pub/sub spread over shards.

Built from the `NOTIFY_REDIS_*` settings (the service's `Settings.redis_topology`,
the publishers' `PublisherConfig.from_env`), or from a URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit


class RedisMode(StrEnum):
    STANDALONE = "standalone"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


Address = tuple[str, int]


def parse_address(value: str, *, default_port: int) -> Address:
    """`"host:port"`, `"host"` or `"[::1]:7000"` → `(host, port)`; ValueError when bad."""
    text = value.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"no host in {value!r}")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"bad port in {value!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {value!r}")
    return host, port


@dataclass(frozen=True, slots=True)
class RedisTopology:
    """Where the data nodes are and how to authenticate to them. Secrets stay out
    of `repr` (they would land in logs)."""

    mode: RedisMode
    # standalone: the server's URL; cluster: one seed node's URL (both may carry
    # user, password, TLS by `rediss://` and, standalone only, a db number).
    url: str | None = None
    # cluster: more seed nodes; sentinel: the Sentinels' addresses.
    nodes: tuple[Address, ...] = ()
    sentinel_master: str | None = None
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False

    def __repr__(self) -> str:
        return f"RedisTopology(mode={self.mode.value}, nodes={len(self.seed_addresses())})"

    def seed_addresses(self) -> list[Address]:
        """Cluster seeds or Sentinels (the URL's host first), without duplicates."""
        found: list[Address] = []
        if self.url is not None and self.mode is RedisMode.CLUSTER:
            parts = urlsplit(self.url)
            found.append((parts.hostname or "127.0.0.1", parts.port or 6379))
        for address in self.nodes:
            if address not in found:
                found.append(address)
        return found

    @property
    def uses_tls(self) -> bool:
        return self.tls or (self.url or "").startswith("rediss://")

    def credentials(self) -> tuple[str | None, str | None]:
        """(username, password) for data nodes: the settings win over the URL's."""
        parts = urlsplit(self.url or "")
        return (self.username or parts.username or None, self.password or parts.password or None)

    @property
    def server(self) -> str:
        """Standalone: where the server is (`host:port`, or the socket's path)."""
        parts = urlsplit(self.url or "")
        return parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"

    @property
    def db(self) -> int:
        """The database number in the URL's path (0 when none)."""
        path = urlsplit(self.url or "").path.strip("/")
        return int(path) if path.isdigit() else 0

    def describe(self) -> str:
        """One line for logs and `notify doctor`: kind and addresses, never secrets."""
        if self.mode is RedisMode.STANDALONE:
            return f"standalone {self.server}"
        hosts = ",".join(f"{h}:{p}" for h, p in self.seed_addresses())
        if self.mode is RedisMode.SENTINEL:
            return f"sentinel master {self.sentinel_master!r} via {hosts}"
        return f"cluster seeds {hosts}"


def mismatch(configured: RedisMode, where: str, found_mode: str, role: str) -> str | None:
    """The one line that says why this Redis cannot serve `configured`, or None."""
    advice = {
        "cluster": "set NOTIFY_REDIS_MODE=cluster",
        "sentinel": "point NOTIFY_REDIS_SENTINELS at it and set NOTIFY_REDIS_MODE=sentinel",
        "standalone": "set NOTIFY_REDIS_MODE=standalone",
    }
    if found_mode != configured.value:
        kind = {"cluster": "a Redis Cluster node", "sentinel": "a Sentinel"}.get(
            found_mode, "a standalone Redis"
        )
        return (
            f"NOTIFY_REDIS_MODE={configured.value} but {where} is {kind}: "
            f"{advice.get(found_mode, 'check NOTIFY_REDIS_URL')}"
        )
    if configured is not RedisMode.CLUSTER and role != "master":
        return (
            f"{where} is a read-only replica: point NOTIFY_REDIS_URL at the primary "
            "(or use NOTIFY_REDIS_MODE=sentinel)"
        )
    return None
