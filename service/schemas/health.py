"""Health probe bodies: states only, never connection strings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class LiveResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    # "degraded": ready (200), but some Redis Cluster shards do not answer: only
    # their patients wait (every pod sees the same shards, so taking pods out of
    # the load balancer would not help them and would cut off everybody else).
    status: Literal["ready", "degraded", "not_ready"]
    broker: Literal["ok", "unreachable"]
    listener: Literal["up", "down"]
    draining: bool
    saturated: bool
    redis_shards: int = Field(default=1, description="Shard primaries (1 outside Cluster).")
    redis_shards_down: int = 0
