"""The quote signature's text: base58 of the 64 ed25519 bytes, exactly as the base58
package (and every Solana client) writes it, leading zero bytes included."""

from __future__ import annotations

import base58
import pytest
from nacl.signing import SigningKey
from solders.signature import Signature

from quotes.signing import canonical_json, service_public_key, sign_quote, verify_quote_signature


@pytest.mark.parametrize("raw", [bytes(64), b"\x00\x00" + bytes(range(62)), bytes([255]) * 64])
def test_signature_text_is_the_base58_packages(raw):
    assert str(Signature.from_bytes(raw)) == base58.b58encode(raw).decode()


def test_sign_quote_is_base58_ed25519_over_the_canonical_json(settings):
    settings.QUOTE_SIGNING_KEY = "11" * 32
    payload = {"quote_id": "q", "status": "pending", "total_cost": "10", "price": {"rate": "1"}}
    signature = sign_quote(payload)
    expected = SigningKey(bytes.fromhex("11" * 32)).sign(canonical_json(payload)).signature
    assert signature == base58.b58encode(expected).decode()
    assert verify_quote_signature(payload, signature, service_public_key())
