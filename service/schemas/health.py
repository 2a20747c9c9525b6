"""Health probe bodies: states only, never connection strings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class LiveResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready", "not_ready"]
    broker: Literal["ok", "unreachable"]
    listener: Literal["up", "down"]
    draining: bool
    saturated: bool
