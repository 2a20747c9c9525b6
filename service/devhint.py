"""Printed by `make run`: a ready-to-paste way to see an event arrive."""

from __future__ import annotations

from service.config import get_settings
from service.services.tokens import mint_token


def main() -> None:
    settings = get_settings()
    secret = settings.jwt_hmac_secret()
    if settings.env == "production" or secret is None:
        return
    token = mint_token(
        secret=secret,
        sub="pt_demo",
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        ttl_s=8 * 3600,
    )
    base = f"http://{settings.host}:{settings.port}"
    print(
        f"""
  Appointment notifications, development mode ({settings.effective_redis_url})

  Demo page (the browser client, live events, a publish button):
       {base}/demo

  API reference (Swagger UI; "Authorize" takes a token from below):
       {base}/docs      (the OpenAPI document: {base}/openapi.json)

  1. In another terminal, open the demo patient's stream:
       curl -N -H 'Authorization: Bearer {token}' {base}/v1/patients/me/events

  2. In a third one, publish an event for that patient:
       .venv/bin/notify publish --patient-id pt_demo --appointment-id ap_1 \\
         --type appointment.rescheduled --starts-at 2026-12-01T14:00:00Z --ends-at 2026-12-01T14:30:00Z

  Tokens for other subjects: .venv/bin/notify token --sub pt_other
""",
        flush=True,
    )


if __name__ == "__main__":
    main()
