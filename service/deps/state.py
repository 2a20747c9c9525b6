"""Tiny dependencies that read the lifespan's typed state (`service/state.py`) back."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException
from starlette.requests import HTTPConnection

from service.state import AppState

# Dependencies are `async def` even when they don't await: FastAPI runs a plain
# `def` dependency in its thread pool, a thread hop per request (a sixth of the
# CPU of a reconnect storm in profiles).


async def get_state(conn: HTTPConnection) -> AppState:
    """The process' state; settings reach it through `get_settings`, which the
    lifespan resolves (tests swap it with `dependency_overrides`)."""
    state = getattr(conn.state, "notify", None)
    if not isinstance(state, AppState):
        raise HTTPException(status_code=503, detail="starting", headers={"Retry-After": "1"})
    return state


StateDep = Annotated[AppState, Depends(get_state)]
