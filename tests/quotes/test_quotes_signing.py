"""The quote signature's text: base58 of the 64 ed25519 bytes, exactly as the base58
package (and every Solana client) writes it, leading zero bytes included."""

from __future__ import annotations

import datetime as dt
import json

import base58
import pytest
from nacl.signing import SigningKey
from solders.signature import Signature

from quotes.services.quotes import _iso
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


def test_canonical_json_is_the_documented_json_dumps():
    # What clients are told to compute (module docstring and OpenAPI description).
    payload = {"status": "pending", "signature": "s", "execution": None,
               "quote_id": "q", "b": {"z": None, "a": ["ü", "\u2028", 'quote " and \\']},
               "a": "日本", "nonce": "\x00\x1f"}
    signed = {k: v for k, v in payload.items() if k not in ("signature", "status", "execution")}
    documented = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(payload) == documented.encode()
    assert canonical_json(payload).startswith(b'{"a":"\xe6\x97\xa5\xe6\x9c\xac","b":{"a":["\xc3\xbc"')


def test_timestamps_print_as_utc_with_microseconds_whatever_their_zone():
    plus_one = dt.timezone(dt.timedelta(hours=1))
    moment = dt.datetime(2026, 1, 1, 1, 0, 0, tzinfo=plus_one)
    same_instant = dt.datetime(2026, 1, 1, 0, 0, 0, tzinfo=dt.UTC)
    assert _iso(moment) == _iso(same_instant) == "2026-01-01T00:00:00.000000Z"
    assert _iso(same_instant + dt.timedelta(microseconds=7)) == "2026-01-01T00:00:00.000007Z"
