"""The authenticated caller, built only from a verified token (or its ticket)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

# The scopes of a token that has none (most patients'): one shared set, not an
# empty set per principal (216 bytes each, kept for a stream's whole life).
NO_SCOPES: frozenset[str] = frozenset()


def scope_set(scopes: Iterable[str]) -> frozenset[str]:
    """`scopes` as a principal keeps them: `NO_SCOPES` when there are none."""
    found = frozenset(scopes)
    return found if found else NO_SCOPES


class Role(StrEnum):
    PATIENT = "patient"
    STAFF = "staff"
    SERVICE = "service"
    ADMIN = "admin"


class Scope(StrEnum):
    EVENTS_PUBLISH = "events:publish"
    REVOCATIONS_WRITE = "revocations:write"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. `sub` is the patient id for patients, an opaque id otherwise."""

    sub: str
    role: Role
    scopes: frozenset[str] = NO_SCOPES
    jti: str | None = None
    # Unix seconds; a live stream ends when this passes.
    expires_at: float = 0.0
    # The token's `iat` (Unix seconds), if it had one: a subject revocation refuses
    # tokens issued at or before the revocation, and those without `iat`.
    issued_at: float | None = None
    # Set when the stream was opened with a stream ticket, so deleting the ticket
    # can end the streams it opened.
    ticket_id: str | None = None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes
