"""Typed settings read from `NOTIFY_*` environment variables.

Nothing here runs at import time: `get_settings()` builds (and caches) the settings
when the application factory or the CLI asks for them, so a bad value crashes the
process at startup with the variable's name, never in the middle of a request.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from notify_publisher.batch import Durability
from notify_publisher.config import IDEMPOTENCY_TTL_S, PUBLISH_WAIT_TIMEOUT_MS
from notify_publisher.topology import Address, RedisMode, RedisTopology, parse_address
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Only ever valid outside production: `model_validator` below refuses both there.
DEV_JWT_SECRET = "dev-insecure-secret-change-me-0123456789"  # noqa: S105
MEMORY_URL = "memory://"

Environment = Literal["development", "test", "production"]


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every tunable of the service; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="NOTIFY_", extra="ignore", frozen=True)

    env: Environment = "development"

    # --- Redis -------------------------------------------------------------------
    # `None` means "not given": development falls back to the in-memory broker,
    # production refuses to start (see `_check_production`).
    redis_url: str | None = None
    # Which Redis: one server (standalone), a primary found through Sentinels
    # (sentinel) or Redis Cluster (cluster). The process refuses to start when
    # the server it reaches is of another kind (service/brokers/factory.py).
    redis_mode: RedisMode = RedisMode.STANDALONE
    # cluster: seed nodes besides NOTIFY_REDIS_URL's host (`host:port,...`); one
    # answering seed is enough, the rest of the cluster is discovered.
    redis_cluster_nodes: Annotated[list[str], NoDecode] = []
    # sentinel: the Sentinels (`host:port,...`, default port 26379) and the name
    # of the primary they watch.
    redis_sentinels: Annotated[list[str], NoDecode] = []
    redis_sentinel_master: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Authentication of the data nodes (overrides the URL's user and password),
    # and of the Sentinels (often a different password).
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_sentinel_username: str | None = None
    redis_sentinel_password: SecretStr | None = None
    # TLS to the data nodes and Sentinels where no `rediss://` URL says so.
    redis_tls: bool = False
    # Pool bound: the pub/sub listener holds one connection for the life of the
    # process, requests borrow the rest. pods x workers x this must stay under
    # Redis' `maxclients` (10000 by default).
    redis_max_connections: int = Field(default=20, ge=2, le=1000)
    # How long a request waits for a free pool connection before it becomes a 503.
    redis_pool_timeout_s: float = Field(default=2.0, gt=0, le=30)
    # Socket timeout for ordinary commands; redis-py 8 defaults to 5 s.
    redis_socket_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # Readiness fails if PING takes longer than this.
    redis_health_timeout_s: float = Field(default=1.0, gt=0, le=10)
    key_prefix: str = Field(default="notify:", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")

    # --- JWT ---------------------------------------------------------------------
    jwt_algorithms: Annotated[list[str], NoDecode] = ["HS256"]
    jwt_secret: SecretStr | None = None
    jwt_public_key: SecretStr | None = None
    jwt_jwks_url: str | None = None
    jwt_audience: str = "notify"
    jwt_issuer: str = "notify-dev"
    # Clock skew tolerated between the identity provider and this service.
    jwt_leeway_s: int = Field(default=10, ge=0, le=300)
    # JWKS keys are cached this long; an outage keeps serving the cached keys.
    jwt_jwks_cache_s: int = Field(default=300, ge=10)

    # --- uvicorn (`notify serve`) -----------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    # Above nginx's upstream keepalive_timeout (60 s) and the ALB's idle timeout,
    # so the proxy, not uvicorn, closes idle keep-alive connections (no 502s).
    keepalive_timeout_s: int = Field(default=75, ge=1)
    # A request's headers must be complete this soon after the connection opens (or
    # after its first byte on a keep-alive connection): uvicorn itself waits forever,
    # and nothing else stops half-open requests without a proxy in front.
    header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    proxy_headers: bool = True
    forwarded_allow_ips: str = "127.0.0.1"
    # Protocol pings keep WebSockets alive through the ALB's 60 s idle timeout.
    ws_ping_interval_s: float = Field(default=20.0, gt=0)
    ws_ping_timeout_s: float = Field(default=20.0, gt=0)
    # uvicorn closes a connection whose frame exceeds this with 1009 itself.
    ws_max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    # permessage-deflate costs ~40 KiB of zlib state per idle connection (measured:
    # ~90 vs ~48 KiB per socket, bench/ws_idle.py) for events of a few hundred bytes.
    ws_per_message_deflate: bool = False
    # A WebSocket without a ticket or bearer header must send `auth` this soon.
    ws_auth_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # Subscriptions one WebSocket may hold at once (it counts once against limits).
    ws_max_subscriptions: int = Field(default=10, ge=1, le=100)
    # Invalid frames a connection may send before it is closed with 1008.
    ws_max_invalid_messages: int = Field(default=10, ge=1, le=1000)
    # `notify:commands` is trimmed (approximately) to this many entries: backends
    # must consume faster than clients fill it.
    commands_maxlen: int = Field(default=100_000, ge=100)

    # --- Streams -----------------------------------------------------------------
    # Under the ALB's 60 s idle timeout: only real bytes reset it.
    heartbeat_s: float = Field(default=15.0, gt=0, lt=60)
    sse_retry_ms: int = Field(default=3000, ge=100, le=600_000)
    # Per-connection backlog before the connection is closed as "too slow".
    client_queue_max: int = Field(default=256, ge=1, le=100_000)
    # A dead TCP peer is only noticed when a write stalls this long.
    send_timeout_s: float = Field(default=30.0, gt=0)
    history_maxlen: int = Field(default=1000, ge=1, le=1_000_000)
    history_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    # Replay is read from history in pages of this size.
    history_page: int = Field(default=500, ge=10, le=10_000)

    # --- Publishing --------------------------------------------------------------
    # How long an `Idempotency-Key` (`idempotency_key=` in the library) is
    # remembered: a retry within it answers the first id and stores nothing. The
    # IETF draft suggests at least 24 hours; one small hash per key in Redis.
    idempotency_ttl_s: int = Field(default=IDEMPOTENCY_TTL_S, ge=1, le=30 * 24 * 3600)
    # Durable publishing: replicas that must acknowledge every publish (WAIT)
    # before it is answered; 0 answers on the primary's word (asynchronous
    # replication: a failover can lose it, and streams then get a `gap`).
    publish_wait_replicas: int = Field(default=0, ge=0, le=16)
    # WAIT's timeout (0 would block forever); not confirmed in time is a 503
    # `not_durable`. Must stay under NOTIFY_REDIS_SOCKET_TIMEOUT_S.
    publish_wait_timeout_ms: int = Field(default=PUBLISH_WAIT_TIMEOUT_MS, ge=1, le=60_000)

    # --- Capacity ----------------------------------------------------------------
    max_connections: int = Field(default=10_000, ge=1)
    max_connections_per_subject: int = Field(default=10, ge=1)

    # --- Lifecycle ---------------------------------------------------------------
    # Drain window, under Kubernetes' default 30 s terminationGracePeriodSeconds.
    shutdown_grace_s: float = Field(default=25.0, gt=0, le=600)
    # Streams are told to reconnect spread over this share of the grace window so
    # that clients don't all come back to the next pod in the same instant.
    shutdown_jitter_fraction: float = Field(default=0.4, gt=0, le=0.9)

    # --- Garbage collector -------------------------------------------------------
    # With ten thousand streams a full collection scans ~a million objects and
    # pauses the loop for hundreds of ms (measured: the p99 of unicast at 10,000
    # streams). After start-up the heap is frozen (never scanned again) and
    # collections run far less often; cyclic garbage is still collected.
    gc_tuning: bool = True
    gc_thresholds: Annotated[tuple[int, int, int], NoDecode] = (50_000, 20, 100)

    # --- Outbox (PostgreSQL) -----------------------------------------------------
    # `notify outbox migrate` and `notify relay` (service/outbox/); a secret: the
    # URL may carry a password. Never logged.
    outbox_dsn: SecretStr | None = None
    # Also run the relay as a task of `notify serve` (off: run `notify relay`).
    outbox_relay_enabled: bool = False
    # Rows per claim (one transaction), publish pipelines in flight, the polling
    # safety net under LISTEN/NOTIFY, and how long published rows are kept.
    outbox_batch_size: int = Field(default=500, ge=1, le=10_000)
    outbox_publish_concurrency: int = Field(default=16, ge=1, le=256)
    outbox_poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    outbox_retention_s: float = Field(default=24 * 3600.0, ge=0)

    # --- Logging / HTTP ----------------------------------------------------------
    log_format: Literal["console", "json"] | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    cors_origins: Annotated[list[str], NoDecode] = []

    @field_validator(
        "jwt_algorithms",
        "cors_origins",
        "gc_thresholds",
        "redis_cluster_nodes",
        "redis_sentinels",
        mode="before",
    )
    @classmethod
    def _parse_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        allowed = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384"}
        unknown = [alg for alg in value if alg not in allowed]
        if not value or unknown:
            raise ValueError(f"NOTIFY_JWT_ALGORITHMS must be a subset of {sorted(allowed)}")
        return value

    @field_validator("redis_cluster_nodes")
    @classmethod
    def _cluster_addresses(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_address(item, default_port=6379)
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_address(item, default_port=26379)
        return value

    @model_validator(mode="after")
    def _check_publish_wait(self) -> Self:
        if self.publish_wait_timeout_ms >= self.redis_socket_timeout_s * 1000:
            raise ValueError(
                "NOTIFY_PUBLISH_WAIT_TIMEOUT_MS must stay under NOTIFY_REDIS_SOCKET_TIMEOUT_S "
                "(the connection would time out while WAIT still waits)"
            )
        return self

    @model_validator(mode="after")
    def _check_redis_mode(self) -> Self:
        url = self.redis_url or ""
        if self.redis_mode is RedisMode.CLUSTER:
            if url and not url.startswith(("redis://", "rediss://")):
                raise ValueError(
                    "NOTIFY_REDIS_MODE=cluster needs NOTIFY_REDIS_URL=redis:// or rediss:// "
                    "(a seed node) or NOTIFY_REDIS_CLUSTER_NODES"
                )
            if not url and not self.redis_cluster_nodes:
                raise ValueError(
                    "NOTIFY_REDIS_MODE=cluster needs a seed node: NOTIFY_REDIS_URL "
                    "(redis://host:port) or NOTIFY_REDIS_CLUSTER_NODES (host:port,...)"
                )
            if urlsplit(url).path.strip("/") not in ("", "0"):
                raise ValueError(
                    "Redis Cluster has only database 0: drop the /N of NOTIFY_REDIS_URL"
                )
        elif self.redis_mode is RedisMode.SENTINEL:
            if not self.redis_sentinels or not self.redis_sentinel_master:
                raise ValueError(
                    "NOTIFY_REDIS_MODE=sentinel needs NOTIFY_REDIS_SENTINELS (host:port,...) "
                    "and NOTIFY_REDIS_SENTINEL_MASTER"
                )
            if url and not url.startswith(("redis://", "rediss://")):
                raise ValueError(
                    "with NOTIFY_REDIS_MODE=sentinel, NOTIFY_REDIS_URL may only carry the "
                    "primary's credentials, TLS and db (redis://[user:password@]/db)"
                )
        elif self.redis_cluster_nodes or self.redis_sentinels:
            raise ValueError(
                "NOTIFY_REDIS_CLUSTER_NODES / NOTIFY_REDIS_SENTINELS are set but "
                f"NOTIFY_REDIS_MODE={self.redis_mode.value}: set NOTIFY_REDIS_MODE=cluster or sentinel"
            )
        return self

    @field_validator("outbox_dsn")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("NOTIFY_OUTBOX_DSN must be a postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _check_outbox(self) -> Self:
        if self.outbox_relay_enabled and self.outbox_dsn is None:
            raise ValueError("NOTIFY_OUTBOX_RELAY_ENABLED=true needs NOTIFY_OUTBOX_DSN")
        if self.outbox_relay_enabled and self.uses_memory_broker:
            raise ValueError("the outbox relay publishes to Redis: set NOTIFY_REDIS_URL")
        return self

    @model_validator(mode="after")
    def _check_production(self) -> Self:
        if self.env == "production":
            if self.uses_memory_broker:
                raise ValueError(
                    "NOTIFY_REDIS_URL is required when NOTIFY_ENV=production "
                    "(memory:// is refused there)"
                )
            secret = self.jwt_secret.get_secret_value() if self.jwt_secret else None
            if secret == DEV_JWT_SECRET:
                raise ValueError("the development NOTIFY_JWT_SECRET is refused in production")
            if not (secret or self.jwt_public_key or self.jwt_jwks_url):
                raise ValueError(
                    "one of NOTIFY_JWT_SECRET, NOTIFY_JWT_PUBLIC_KEY or NOTIFY_JWT_JWKS_URL "
                    "is required when NOTIFY_ENV=production"
                )
            if secret is not None and len(secret) < 32:
                raise ValueError("NOTIFY_JWT_SECRET must be at least 32 characters in production")
            self._check_production_keys()
        self._check_jwt_keys()
        if self.uses_memory_broker and self.workers > 1:
            raise ValueError(
                "NOTIFY_REDIS_URL=memory:// holds state in one process: it cannot serve "
                "NOTIFY_WORKERS > 1 (configure Redis)"
            )
        if self.redis_url and not self.redis_url.startswith(
            (MEMORY_URL, "redis://", "rediss://", "unix://")
        ):
            raise ValueError("NOTIFY_REDIS_URL must be redis://, rediss://, unix:// or memory://")
        return self

    def _check_jwt_keys(self) -> None:
        """Key settings that are wrong in any environment: a bad PEM, two sources."""
        if self.jwt_public_key and self.jwt_jwks_url:
            raise ValueError("set NOTIFY_JWT_PUBLIC_KEY or NOTIFY_JWT_JWKS_URL, not both")
        if self.jwt_jwks_url and not self.jwt_jwks_url.startswith(("https://", "http://")):
            raise ValueError("NOTIFY_JWT_JWKS_URL must be an https:// URL")
        if self.jwt_public_key:
            # Imported here: parsing needs `cryptography`, settings should not at import.
            from service.keys import algorithms_for_key, load_public_key

            try:
                key = load_public_key(self.jwt_public_key.get_secret_value())
            except ValueError as exc:
                raise ValueError(f"NOTIFY_JWT_PUBLIC_KEY: {exc}") from None
            if not algorithms_for_key(key) & set(self.jwt_algorithms):
                raise ValueError(
                    "NOTIFY_JWT_PUBLIC_KEY cannot verify any algorithm of NOTIFY_JWT_ALGORITHMS "
                    "(an RSA key needs RS256/384/512, a P-256 key ES256, a P-384 key ES384)"
                )

    def _check_production_keys(self) -> None:
        """Production: every allowed algorithm has its key, JWKS only over https."""
        asymmetric = [alg for alg in self.jwt_algorithms if not alg.startswith("HS")]
        hmac = [alg for alg in self.jwt_algorithms if alg.startswith("HS")]
        if asymmetric and not (self.jwt_public_key or self.jwt_jwks_url):
            raise ValueError(
                f"NOTIFY_JWT_ALGORITHMS allows {','.join(asymmetric)}: "
                "NOTIFY_JWT_PUBLIC_KEY or NOTIFY_JWT_JWKS_URL is required in production"
            )
        if hmac and self.jwt_secret is None:
            raise ValueError(
                f"NOTIFY_JWT_ALGORITHMS allows {','.join(hmac)}: NOTIFY_JWT_SECRET is required "
                "(or allow only RS*/ES* algorithms)"
            )
        if self.jwt_jwks_url and not self.jwt_jwks_url.startswith("https://"):
            raise ValueError("NOTIFY_JWT_JWKS_URL must be https:// in production")

    @property
    def uses_memory_broker(self) -> bool:
        return self.redis_mode is RedisMode.STANDALONE and self.effective_redis_url == MEMORY_URL

    def redis_topology(self) -> RedisTopology:
        """The Redis this process talks to (not meaningful with the memory broker)."""
        nodes: list[Address] = []
        if self.redis_mode is RedisMode.CLUSTER:
            nodes = [parse_address(n, default_port=6379) for n in self.redis_cluster_nodes]
        elif self.redis_mode is RedisMode.SENTINEL:
            nodes = [parse_address(n, default_port=26379) for n in self.redis_sentinels]
        return RedisTopology(
            mode=self.redis_mode,
            url=self.redis_url,
            nodes=tuple(nodes),
            sentinel_master=self.redis_sentinel_master,
            username=self.redis_username,
            password=self.redis_password.get_secret_value() if self.redis_password else None,
            sentinel_username=self.redis_sentinel_username,
            sentinel_password=(
                self.redis_sentinel_password.get_secret_value()
                if self.redis_sentinel_password
                else None
            ),
            tls=self.redis_tls,
        )

    def durability(self, wait_replicas: int | None = None) -> Durability | None:
        """What a publish waits for: `wait_replicas` (per call) or the setting."""
        replicas = self.publish_wait_replicas if wait_replicas is None else wait_replicas
        if replicas == 0:
            return None
        return Durability(replicas=replicas, timeout_ms=self.publish_wait_timeout_ms)

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or MEMORY_URL

    @property
    def effective_log_format(self) -> Literal["console", "json"]:
        if self.log_format is not None:
            return self.log_format
        return "console" if self.env == "development" else "json"

    def jwt_hmac_secret(self) -> str | None:
        """The HMAC key: the configured one, or the development default outside production."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        if self.env != "production" and not (self.jwt_public_key or self.jwt_jwks_url):
            return DEV_JWT_SECRET
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, built once; a FastAPI dependency tests can swap."""
    return Settings()
