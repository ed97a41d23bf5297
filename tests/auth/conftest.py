"""Wallets with real keys for the sign-in tests, and helpers speaking the public API."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.core.cache import cache
from nacl.signing import SigningKey
from rest_framework.test import APIClient
from solders.keypair import Keypair as SolanaKeypair
from stellar_sdk import Keypair as StellarKeypair

from users.signatures import sign_near_nep413, sign_solana, sign_stellar


@pytest.fixture(autouse=True)
def _fresh_throttle_counters():
    # The auth throttle counts per IP in the cache; every test starts with a clean slate.
    cache.clear()
    yield
    cache.clear()


@dataclass
class WalletHolder:
    """A wallet holder with a real key: signs a challenge the way its wallet app would."""

    chain: str
    address: str
    key: Any
    near_account: str | None = field(default=None)

    def proof(self, challenge: dict[str, Any], *, message: str | None = None,
              nonce: bytes | None = None, recipient: str | None = None) -> dict[str, str]:
        """The verify body fields for `challenge` (overrides sign something else instead)."""
        text = challenge["message"] if message is None else message
        if self.chain == "solana":
            return {"signature": sign_solana(self.key, text)}
        if self.chain == "stellar":
            return {"signature": sign_stellar(self.key, text)}
        signature, public_key = sign_near_nep413(
            self.key, text,
            base64.b64decode(challenge["nonce"]) if nonce is None else nonce,
            challenge["recipient"] if recipient is None else recipient,
        )
        return {"signature": signature, "public_key": public_key}

    @property
    def public_key(self) -> str:
        if self.chain == "near":
            return sign_near_nep413(self.key, "x", b"\0" * 32, "x")[1]
        return self.address


def new_wallet(chain: str, *, near_account: str | None = None) -> WalletHolder:
    if chain == "solana":
        keypair = SolanaKeypair()
        return WalletHolder("solana", str(keypair.pubkey()), keypair)
    if chain == "stellar":
        stellar = StellarKeypair.random()
        return WalletHolder("stellar", stellar.public_key, stellar)
    if chain == "near":
        # Implicit account (hex of the public key) unless a named account is given.
        signing_key = SigningKey.generate()
        address = near_account or bytes(signing_key.verify_key).hex()
        return WalletHolder("near", address, signing_key, near_account)
    raise ValueError(chain)


@pytest.fixture
def wallet() -> Callable[..., WalletHolder]:
    return new_wallet


def request_challenge(client: APIClient, w: WalletHolder) -> dict[str, Any]:
    response = client.post("/api/v1/auth/challenge", {"chain": w.chain, "address": w.address},
                           format="json")
    assert response.status_code == 201, response.content
    return response.json()


def verify(client: APIClient, challenge: dict[str, Any], proof: dict[str, str],
           **extra: Any) -> Any:
    return client.post("/api/v1/auth/verify",
                       {"challenge_id": challenge["challenge_id"], **proof, **extra},
                       format="json")


def sign_in(client: APIClient, w: WalletHolder) -> dict[str, Any]:
    challenge = request_challenge(client, w)
    response = verify(client, challenge, w.proof(challenge))
    assert response.status_code == 200, response.content
    return response.json()


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def auth_api() -> Any:
    """The helper functions, for test modules (tests/auth has no package to import from)."""

    class Api:
        challenge = staticmethod(request_challenge)
        verify = staticmethod(verify)
        sign_in = staticmethod(sign_in)
        bearer = staticmethod(bearer)
        new_wallet = staticmethod(new_wallet)

    return Api
