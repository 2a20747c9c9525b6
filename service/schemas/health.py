"""Health probe bodies: states only, never connection strings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class LiveResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    # "degraded": ready (200), but some Redis Cluster shards do not answer, or Redis
    # refuses writes (full, read-only …) while streams still work: publishes wait,
    # and every pod sees the same Redis, so taking pods out of the load balancer
    # would not help them and would cut off every stream.
    status: Literal["ready", "degraded", "not_ready"]
    broker: Literal["ok", "unreachable"]
    listener: Literal["up", "down"]
    draining: bool
    saturated: bool
    redis_shards: int = Field(default=1, description="Shard primaries (1 outside Cluster).")
    redis_shards_down: int = 0
    causes: list[str] = Field(
        default_factory=list,
        description="Why `degraded`: `redis_shards_down`, or the code of a Redis refusal "
        "(`redis_oom`, `redis_readonly` …, as in a publish's 503) seen since the last "
        "write that went through, within 30 s.",
    )
