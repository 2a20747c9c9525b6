"""Tiny dependencies that read the lifespan's typed state back."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException
from starlette.requests import HTTPConnection

from service.brokers.base import Broker
from service.config import Settings, get_settings
from service.lifespan import AppState

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_state(conn: HTTPConnection) -> AppState:
    state = getattr(conn.state, "notify", None)
    if not isinstance(state, AppState):
        raise HTTPException(status_code=503, detail="starting")
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_broker(state: StateDep) -> Broker:
    return state.broker


BrokerDep = Annotated[Broker, Depends(get_broker)]
