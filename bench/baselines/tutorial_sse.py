"""BASELINE FOR THE BENCHMARK ONLY: NOT PART OF THE SERVICE, NEVER DEPLOY IT.

This is the pattern most FastAPI + SSE tutorials show, kept here so that
``python -m bench`` can measure our service against it in the same run:

* sse-starlette's ``EventSourceResponse`` around an async generator;
* **one redis-py pub/sub connection per client** (``redis.pubsub()`` inside the
  generator, ``async for message in pubsub.listen()``);
* the WebSocket variant does the same with one pub/sub per socket.

It is given every advantage the tutorials would allow without changing the
pattern: the same URLs, ``Authorization: Bearer`` JWT and event JSON as our
service (so one load generator drives both), the redis-py pool raised so that
it can hold one connection per client (``BASELINE_REDIS_MAX_CONNECTIONS``,
default 50,000: the redis-py 8 default of 100 fails at the 101st client), and
the payload forwarded as received (no validation, no re-serialisation), which
is cheaper than what our service does. It has no history: ``Last-Event-ID`` is
ignored, so a reconnecting client cannot catch up.

Settings (environment): BASELINE_REDIS_URL, BASELINE_JWT_SECRET,
BASELINE_HEARTBEAT_S, BASELINE_REDIS_MAX_CONNECTIONS.
Run: ``uvicorn bench.baselines.tutorial_sse:app --port 8001``.
"""

from __future__ import annotations

import asyncio
import json
import os

import jwt
import redis.asyncio as redis
from fastapi import Depends, FastAPI, Header, HTTPException, Request, WebSocket, WebSocketDisconnect
from sse_starlette.sse import EventSourceResponse

REDIS_URL = os.environ.get("BASELINE_REDIS_URL", "redis://127.0.0.1:6379/0")
JWT_SECRET = os.environ.get("BASELINE_JWT_SECRET", "dev-secret")
HEARTBEAT_S = float(os.environ.get("BASELINE_HEARTBEAT_S", "15"))
MAX_CONNECTIONS = int(os.environ.get("BASELINE_REDIS_MAX_CONNECTIONS", "50000"))

redis_client = redis.from_url(REDIS_URL, decode_responses=True, max_connections=MAX_CONNECTIONS)

app = FastAPI(title="tutorial SSE baseline (benchmark only)")


def patient_from_token(token: str) -> str:
    try:
        claims = jwt.decode(
            token,
            JWT_SECRET,
            algorithms=["HS256"],
            audience="notify",
            issuer="notify-dev",
        )
    except jwt.InvalidTokenError:
        raise HTTPException(status_code=401, detail="invalid token") from None
    return claims["sub"]


async def current_patient(authorization: str = Header(...)) -> str:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        raise HTTPException(status_code=401, detail="invalid token")
    return patient_from_token(token)


@app.get("/v1/patients/me/events")
async def patient_events(request: Request, patient_id: str = Depends(current_patient)):
    async def event_generator():
        pubsub = redis_client.pubsub()
        await pubsub.subscribe(f"notify:patient:{{{patient_id}}}")
        try:
            async for message in pubsub.listen():
                if message["type"] != "message":
                    continue
                yield {"event": "message", "data": message["data"]}
        finally:
            await pubsub.unsubscribe()
            await pubsub.aclose()

    return EventSourceResponse(event_generator(), ping=HEARTBEAT_S)


@app.websocket("/v1/ws")
async def websocket_events(websocket: WebSocket):
    authorization = websocket.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    try:
        if scheme.lower() != "bearer":
            raise HTTPException(status_code=401)
        patient_id = patient_from_token(token)
    except HTTPException:
        await websocket.close(code=1008)
        return
    await websocket.accept()
    # Wait for the client's subscribe message, then forward its channel.
    await websocket.receive_text()
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(f"notify:patient:{{{patient_id}}}")
    await websocket.send_text(json.dumps({"type": "subscribed"}))
    try:

        async def forward():
            async for message in pubsub.listen():
                if message["type"] == "message":
                    await websocket.send_text('{"type":"event","event":' + message["data"] + "}")

        async def drain():
            while True:
                await websocket.receive_text()

        tasks = [asyncio.create_task(forward()), asyncio.create_task(drain())]
        _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
    except WebSocketDisconnect:
        pass
    finally:
        await pubsub.unsubscribe()
        await pubsub.aclose()
