"""Every Redis key and channel of the notification service, under one prefix.

The service and every publisher build names here, so a publisher can never write
where the service does not read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

DEFAULT_PREFIX: Final = "notify:"

# An idempotency key as a client sends it (`Idempotency-Key` header, or the
# library's `idempotency_key=`): 1 to 255 visible ASCII characters. It ends a Redis
# key name, after the patient's hash tag, so braces in it change nothing.
IDEMPOTENCY_KEY_PATTERN: Final = r"^[\x21-\x7e]{1,255}$"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def is_idempotency_key(value: str) -> bool:
    return _IDEMPOTENCY_KEY.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The key scheme (DESIGN.md, "Redis keys").

    The patient id is a hash tag (literal braces) in every per-patient name, in
    every Redis mode: a patient's live channel, history stream and idempotency
    records then share one Cluster slot, so the publish script (`publish.lua`)
    runs on one shard, and one key scheme serves standalone, Sentinel and Cluster
    alike (a deployment can move between them). Patient ids never contain braces
    (`OPAQUE_ID_PATTERN`)."""

    prefix: str = DEFAULT_PREFIX

    def patient_channel(self, patient_id: str) -> str:
        return f"{self.prefix}patient:{{{patient_id}}}"

    def history(self, patient_id: str) -> str:
        return f"{self.prefix}history:{{{patient_id}}}"

    def idempotency(self, patient_id: str, key: str) -> str:
        """The record of one idempotency key: the id it stored, in the patient's slot."""
        return f"{self.prefix}idempotency:{{{patient_id}}}:{key}"

    @property
    def control(self) -> str:
        return f"{self.prefix}control"

    @property
    def commands(self) -> str:
        return f"{self.prefix}commands"

    def ticket(self, ticket: str) -> str:
        return f"{self.prefix}ticket:{ticket}"

    def revoked_jti(self, jti: str) -> str:
        return f"{self.prefix}revoked:jti:{jti}"

    def revoked_sub(self, sub: str) -> str:
        return f"{self.prefix}revoked:sub:{sub}"

    def patient_from_channel(self, channel: str) -> str | None:
        head = f"{self.prefix}patient:{{"
        if channel.startswith(head) and channel.endswith("}"):
            return channel[len(head) : -1] or None
        return None
