"""Settings crash at start-up with the variable's name, never mid-request."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.config import DEV_JWT_SECRET, Settings

STRONG = "x" * 40


def build(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_development_defaults() -> None:
    settings = build()
    assert settings.uses_memory_broker
    assert settings.jwt_hmac_secret() == DEV_JWT_SECRET
    assert settings.effective_log_format == "console"
    assert settings.heartbeat_s < 60


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"jwt_secret": STRONG}, "NOTIFY_REDIS_URL"),
        ({"redis_url": "memory://", "jwt_secret": STRONG}, "NOTIFY_REDIS_URL"),
        ({"redis_url": "redis://r:6379/0"}, "NOTIFY_JWT_SECRET"),
        ({"redis_url": "redis://r:6379/0", "jwt_secret": DEV_JWT_SECRET}, "NOTIFY_JWT_SECRET"),
        ({"redis_url": "redis://r:6379/0", "jwt_secret": "short"}, "NOTIFY_JWT_SECRET"),
    ],
)
def test_production_refuses_missing_or_development_values(
    values: dict[str, object], names: str
) -> None:
    with pytest.raises(ValidationError, match=names):
        build(env="production", **values)


def test_production_accepts_real_values() -> None:
    settings = build(env="production", redis_url="redis://r:6379/0", jwt_secret=STRONG)
    assert settings.effective_log_format == "json"
    assert settings.jwt_hmac_secret() == STRONG


def test_memory_broker_refused_with_several_workers() -> None:
    with pytest.raises(ValidationError, match="NOTIFY_WORKERS"):
        build(workers=2)
    assert build(workers=2, redis_url="redis://r:6379/0").workers == 2


def test_csv_values_parse() -> None:
    settings = build(
        jwt_algorithms="RS256, ES256", cors_origins="https://a.example,https://b.example"
    )
    assert settings.jwt_algorithms == ["RS256", "ES256"]
    assert settings.cors_origins == ["https://a.example", "https://b.example"]


def test_unknown_algorithm_refused() -> None:
    with pytest.raises(ValidationError, match="NOTIFY_JWT_ALGORITHMS"):
        build(jwt_algorithms="none")


def test_service_refuses_to_start_in_production_without_redis_url() -> None:
    """The real process, not just the model: it exits at start-up naming the variable."""
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"],
        env={"NOTIFY_ENV": "production", "NOTIFY_JWT_SECRET": STRONG, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert b"NOTIFY_REDIS_URL" in result.stderr


def test_token_command_refused_in_production() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "token", "--sub", "pt_1"],
        env={
            "NOTIFY_ENV": "production",
            "NOTIFY_JWT_SECRET": STRONG,
            "NOTIFY_REDIS_URL": "redis://127.0.0.1:1/0",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"refused in production" in result.stderr
    assert result.stdout == b""


def test_outbox_settings() -> None:
    dsn = "postgresql://relay:pw@db:5432/clinic"
    settings = build(outbox_dsn=dsn, redis_url="redis://r:6379/0")
    assert settings.outbox_dsn is not None
    assert settings.outbox_dsn.get_secret_value() == dsn
    assert "pw" not in repr(settings)
    assert settings.outbox_relay_enabled is False
    with pytest.raises(ValidationError, match="postgresql://"):
        build(outbox_dsn="mysql://db/clinic")
    with pytest.raises(ValidationError, match="NOTIFY_OUTBOX_DSN"):
        build(outbox_relay_enabled=True, redis_url="redis://r:6379/0")
    with pytest.raises(ValidationError, match="NOTIFY_REDIS_URL"):
        build(outbox_relay_enabled=True, outbox_dsn=dsn)
