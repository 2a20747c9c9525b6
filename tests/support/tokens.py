"""Signed test tokens and the bearer header: the one place tests mint them."""

from __future__ import annotations

from typing import Any

from service.config import DEV_JWT_SECRET
from service.services.principal import Role
from service.services.tokens import mint_token


class Tokens:
    """Signed test tokens; `make` accepts any claim override."""

    def __init__(self, secret: str = DEV_JWT_SECRET) -> None:
        self.secret = secret

    def make(
        self,
        sub: str = "pt_1",
        *,
        role: Role = Role.PATIENT,
        scopes: tuple[str, ...] = (),
        ttl_s: int = 3600,
        **extra: Any,
    ) -> str:
        return mint_token(
            secret=self.secret,
            sub=sub,
            audience="notify",
            issuer="notify-dev",
            role=role,
            scopes=scopes,
            ttl_s=ttl_s,
            extra=extra,
        )

    def patient(self, sub: str = "pt_1", **kw: Any) -> str:
        return self.make(sub, **kw)

    def staff(self, sub: str = "st_1") -> str:
        return self.make(sub, role=Role.STAFF)

    def service(self, sub: str = "svc_1") -> str:
        return self.make(sub, role=Role.SERVICE, scopes=("events:publish",))

    def admin(self, sub: str = "adm_1") -> str:
        return self.make(sub, role=Role.ADMIN, scopes=("revocations:write",))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
