"""Public keys for JWT verification: parse a PEM, and which algorithms a key can
verify. A leaf module: the settings check a configured key with it at start-up,
and `services/tokens.py` verifies with it."""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512"})
# Each ECDSA algorithm is bound to exactly one curve (RFC 7518 §3.4).
EC_CURVES: Final = {"ES256": "secp256r1", "ES384": "secp384r1"}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def algorithms_for_key(key: object) -> frozenset[str]:
    """The asymmetric algorithms this public key can verify."""
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return frozenset(alg for alg, curve in EC_CURVES.items() if key.curve.name == curve)
    return frozenset()


def load_public_key(pem: str) -> PublicKey:
    """Parse a PEM public key (RSA or EC); `ValueError` for anything else.

    Literal `\\n` sequences are accepted, as environment variables often carry them."""
    text = pem.strip().replace("\\n", "\n")
    try:
        key = load_pem_public_key(text.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError("not a PEM-encoded public key") from exc
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("only RSA and EC public keys are supported")
    return key
