"""Tickets, revocations and the control channel, called directly (services know
nothing of HTTP) on the in-memory broker."""

from __future__ import annotations

import json
import time

import pytest
from notify_publisher.keys import RedisKeys

from service.brokers.memory import MemoryBroker
from service.fanout.closing import CloseReason
from service.fanout.control import handle_control, sweep_live_streams
from service.fanout.hub import Hub
from service.fanout.queue import DeliveryQueue
from service.services.control import parse_control
from service.services.errors import NotFoundError, UnauthorizedError
from service.services.principal import Principal, Role
from service.services.revocations import InvalidRevocationError, RevocationStore
from service.services.tickets import TicketStore, ticket_id

KEYS = RedisKeys("u:")


async def broker() -> MemoryBroker:
    memory = MemoryBroker(control_channel=KEYS.control)
    await memory.start()
    return memory


def principal(sub: str = "pt_1", **kw: object) -> Principal:
    values: dict[str, object] = {
        "role": Role.PATIENT,
        "jti": "j1",
        "expires_at": time.time() + 600,
        "issued_at": 1000.0,
    }
    values.update(kw)
    return Principal(sub=sub, **values)  # type: ignore[arg-type]


async def hub_with(*principals: Principal) -> tuple[Hub, list[DeliveryQueue]]:
    hub = Hub(keys=KEYS, broker=MemoryBroker(control_channel=KEYS.control))
    queues = []
    for p in principals:
        queue = DeliveryQueue(maxlen=10, transport="sse", principal=p)
        await hub.attach(p.sub, queue)
        queues.append(queue)
    return hub, queues


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1]",
        b'{"type": "something_newer", "x": 1}',
        b'{"type": "ticket_deleted", "ticket_id": "not-a-hash"}',
        b'{"type": "revoked", "jti": ""}',
        b'{"type": "revoked", "jti": "' + b"x" * 5000 + b'"}',
    ],
)
def test_unknown_or_malformed_control_messages_are_ignored(raw: bytes) -> None:
    assert parse_control(raw) is None


async def test_control_messages_close_exactly_the_matching_streams() -> None:
    hub, (by_jti, same_sub_later, same_sub_no_iat, other, with_ticket) = await hub_with(
        principal(jti="j1"),
        principal(jti="j2", issued_at=2000.0),
        principal(jti="j3", issued_at=None),
        principal("pt_2", jti="j4"),
        principal("pt_2", jti="j5", ticket_id="a" * 64),
    )
    assert handle_control(hub, json.dumps({"type": "revoked", "jti": "j1"}).encode()) == 1
    assert by_jti.close_reason is CloseReason.REVOKED
    # A subject revocation at t=1500 covers tokens issued before it and those
    # without `iat`, not a token issued at t=2000 (a new login).
    message = {"type": "revoked", "sub": "pt_1", "at": 1500}
    assert handle_control(hub, json.dumps(message).encode()) == 1
    assert same_sub_no_iat.close_reason is CloseReason.REVOKED
    assert same_sub_later.close_reason is None
    deleted = {"type": "ticket_deleted", "ticket_id": "a" * 64}
    assert handle_control(hub, json.dumps(deleted).encode()) == 1
    assert with_ticket.close_reason is CloseReason.TICKET_DELETED
    assert other.close_reason is None


async def test_tickets_issue_redeem_delete() -> None:
    memory = await broker()
    store = TicketStore(broker=memory, keys=KEYS)
    owner = principal(scopes=frozenset({"x"}))
    issued = await store.issue(owner)
    redeemed = await store.redeem(issued.ticket)
    assert redeemed.ticket_id == ticket_id(issued.ticket) == issued.ticket_id
    assert (redeemed.sub, redeemed.jti, redeemed.scopes) == (owner.sub, owner.jti, owner.scopes)
    assert redeemed.expires_at == owner.expires_at
    # Redeemable again (EventSource reconnects), but never buys another ticket.
    assert (await store.redeem(issued.ticket)).sub == owner.sub
    with pytest.raises(UnauthorizedError):
        await store.issue(redeemed)
    with pytest.raises(NotFoundError):
        await store.delete(issued.ticket, owner=principal("pt_2"))
    await store.delete(issued.ticket, owner=owner)
    with pytest.raises(UnauthorizedError):
        await store.redeem(issued.ticket)


async def test_ticket_dies_with_its_token() -> None:
    store = TicketStore(broker=await broker(), keys=KEYS)
    issued = await store.issue(principal(expires_at=time.time() + 30))
    with pytest.raises(UnauthorizedError) as refused:
        await store.redeem(issued.ticket, now=time.time() + 31)
    assert refused.value.reason == "expired"
    with pytest.raises(UnauthorizedError):
        await store.issue(principal(expires_at=time.time() - 1))


async def test_revocation_rules_and_semantics() -> None:
    store = RevocationStore(broker=await broker(), keys=KEYS)
    now = time.time()
    for bad in ({}, {"jti": "a", "sub": "b"}):
        with pytest.raises(InvalidRevocationError):
            await store.revoke(until=now + 60, **bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidRevocationError):
        await store.revoke(jti="a", until=now - 1)
    with pytest.raises(InvalidRevocationError):
        await store.revoke(jti="a", until=now + 400 * 24 * 3600)

    await store.revoke(jti="j1", until=now + 60)
    assert await store.is_revoked(principal(jti="j1"))
    assert not await store.is_revoked(principal(jti="j2"))
    revocation = await store.revoke(sub="pt_9", until=now + 60)
    assert await store.is_revoked(principal("pt_9", jti="j9", issued_at=revocation.revoked_at - 10))
    assert await store.is_revoked(principal("pt_9", jti="j9", issued_at=None))
    assert not await store.is_revoked(
        principal("pt_9", jti="j9", issued_at=revocation.revoked_at + 1)
    )


async def test_unreadable_subject_revocation_revokes_everything() -> None:
    memory = await broker()
    await memory.set_value(KEYS.revoked_sub("pt_1"), "yes", ttl_s=60)
    store = RevocationStore(broker=memory, keys=KEYS)
    assert await store.is_revoked(principal("pt_1", issued_at=time.time() + 100))


async def test_sweep_closes_streams_revoked_or_deleted_meanwhile() -> None:
    memory = await broker()
    tickets = TicketStore(broker=memory, keys=KEYS)
    issued = await tickets.issue(principal("pt_3", jti="j3"))
    kept_ticket = await tickets.issue(principal("pt_4", jti="j4"))
    hub, (revoked, deleted, kept, plain) = await hub_with(
        principal(jti="j1"),
        principal("pt_3", jti="j3", ticket_id=issued.ticket_id),
        principal("pt_4", jti="j4", ticket_id=kept_ticket.ticket_id),
        principal("pt_5", jti="j5"),
    )
    await memory.set_value(KEYS.revoked_jti("j1"), "1", ttl_s=60)
    await memory.delete_value(KEYS.ticket(issued.ticket_id))
    closed = await sweep_live_streams(hub=hub, broker=memory, keys=KEYS, tickets=tickets)
    assert closed == 2
    assert revoked.close_reason is CloseReason.REVOKED
    assert deleted.close_reason is CloseReason.TICKET_DELETED
    assert kept.close_reason is None
    assert plain.close_reason is None
