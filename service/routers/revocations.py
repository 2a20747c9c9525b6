"""Token revocation for administrators (`revocations:write`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends

from service.deps.auth import require_scope, revocation_store
from service.deps.state import StateDep
from service.errors import error_responses
from service.schemas.auth import RevocationCreate, RevocationResponse
from service.services.principal import Principal, Scope

router = APIRouter(prefix="/v1/revocations", tags=["auth"])

Revoker = Annotated[Principal, Depends(require_scope(Scope.REVOCATIONS_WRITE))]


@router.post(
    "",
    status_code=201,
    response_model=RevocationResponse,
    response_model_exclude_none=True,
    responses=error_responses(400, 401, 403, 413, 503),
)
async def revoke(body: RevocationCreate, state: StateDep, _: Revoker) -> RevocationResponse:
    """Revoke a token or a subject; its live streams close in every process."""
    revocation = await revocation_store(state).revoke(
        jti=body.jti, sub=body.sub, until=body.until.timestamp()
    )
    return RevocationResponse(
        jti=revocation.jti,
        sub=revocation.sub,
        revoked_at=datetime.fromtimestamp(revocation.revoked_at, UTC),
        until=body.until,
    )
