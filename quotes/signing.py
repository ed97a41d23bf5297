"""The service's ed25519 signature over a quote, so a client can check it before paying.

Canonical form (what is signed), documented for clients in the OpenAPI description too:

    UTF-8 bytes of json.dumps(payload, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False)

where `payload` is the quote's response body WITHOUT the `signature`, `status` and
`execution` fields (those change over the quote's life; everything signed never does). Amounts are
decimal strings, timestamps ISO 8601 UTC with a `Z` suffix, exactly as the response shows
them, so a client re-serializes the body it received and verifies with the public key
published at `GET /api/v1/treasury` (base58, like a Solana address). The signature is
base58 too (64 bytes).

The key is `QUOTE_SIGNING_KEY`: the 32-byte ed25519 seed in hex.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import base58
from django.conf import settings
from nacl.signing import SigningKey
from solders.signature import Signature

UNSIGNED_FIELDS = ("signature", "status", "execution")


# json.dumps with these options builds a new encoder on every call; this one is reused.
# check_circular only guards against a payload containing itself, which ours cannot.
_CANONICAL_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                      check_circular=False)


def canonical_json(payload: dict[str, Any]) -> bytes:
    """The exact bytes that are signed (see the module docstring)."""
    signed = {k: v for k, v in payload.items() if k not in UNSIGNED_FIELDS}
    return _CANONICAL_ENCODER.encode(signed).encode()


@functools.lru_cache(maxsize=4)
def _signing_key(seed_hex: str) -> SigningKey:
    seed = bytes.fromhex(seed_hex)
    if len(seed) != 32:
        raise ValueError("QUOTE_SIGNING_KEY must be a 32-byte ed25519 seed in hex")
    return SigningKey(seed)


def service_public_key() -> str:
    """base58 of the ed25519 public key clients verify quote signatures with."""
    key = _signing_key(settings.QUOTE_SIGNING_KEY)
    return base58.b58encode(bytes(key.verify_key)).decode()


def sign_quote(payload: dict[str, Any]) -> str:
    """base58 ed25519 signature over `canonical_json(payload)`."""
    key = _signing_key(settings.QUOTE_SIGNING_KEY)
    # solders prints 64 bytes in the same base58 as the base58 package, ~40 times faster
    # (one per quote created).
    return str(Signature.from_bytes(key.sign(canonical_json(payload)).signature))


def verify_quote_signature(payload: dict[str, Any], signature: str, public_key: str) -> bool:
    """What a client does: only the public key is needed."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        VerifyKey(base58.b58decode(public_key)).verify(canonical_json(payload),
                                                       base58.b58decode(signature))
    except (BadSignatureError, ValueError):
        return False
    return True
