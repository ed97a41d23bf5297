"""Wallet ownership proofs: a valid proof passes; another key, another message, a tampered or
malformed signature, and anything NEAR-specific (nonce, recipient, implicit key) is refused."""

from __future__ import annotations

import base64
import hashlib
import os
import struct

import base58
import pytest
from nacl.signing import SigningKey
from solders.keypair import Keypair as SolanaKeypair
from stellar_sdk import Keypair as StellarKeypair

from settlement.chains.base import ChainUnavailable
from tests.fakes.near_rpc import FakeNearRpc, near_keypair
from users.signatures import (
    BadSignature,
    InvalidAddress,
    NearAccessKeyChecker,
    nep413_hash,
    sign_near_nep413,
    sign_solana,
    sign_stellar,
    validate_address,
    verify_wallet_signature,
)

MESSAGE = "Sign in to solpay\nchallenge: 7f3c2a\nexpires: 2026-01-01T00:05:00Z"
RECIPIENT = "solpay.example"


def _tamper_b64(signature: str) -> str:
    raw = bytearray(base64.b64decode(signature))
    raw[10] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


# --------------------------------------------------------------------------- addresses


class TestValidateAddress:
    def test_solana_pubkey_is_normalized(self):
        pubkey = str(SolanaKeypair().pubkey())
        assert validate_address("solana", pubkey) == pubkey

    @pytest.mark.parametrize(
        "address",
        [
            "",
            "abc",
            base58.b58encode(b"\x01" * 31).decode(),  # 31 bytes
            base58.b58encode(b"\x01" * 33).decode(),  # 33 bytes
            "0OIl" + "1" * 40,  # not base58
        ],
    )
    def test_solana_rejects_wrong_length_or_alphabet(self, address):
        with pytest.raises(InvalidAddress):
            validate_address("solana", address)

    def test_stellar_account_id(self):
        kp = StellarKeypair.random()
        assert validate_address("stellar", kp.public_key) == kp.public_key

    def test_stellar_rejects_bad_checksum_secret_and_muxed(self):
        kp = StellarKeypair.random()
        broken = kp.public_key[:-1] + ("A" if kp.public_key[-1] != "A" else "B")
        muxed = "MAAAAAAAAAAAAAB7BQ2L7E5NBWMXDUCMZSIPOBKRDSBYVLMXGSSKF6YNPIB7Y77ITLVL6"
        for address in (broken, kp.secret, muxed, kp.public_key.lower()):
            with pytest.raises(InvalidAddress):
                validate_address("stellar", address)

    @pytest.mark.parametrize(
        "account_id",
        ["alice.near", "a1", "sub.alice-b_c.testnet", "0" * 64, "ab" * 32, "near"],
    )
    def test_near_named_and_implicit(self, account_id):
        assert validate_address("near", account_id) == account_id

    @pytest.mark.parametrize(
        "account_id",
        [
            "a",  # too short
            "a" * 65,  # too long
            "Alice.near",  # uppercase
            "alice..near",
            "-alice.near",
            "alice-.near",
            "alice__b.near",
            "alice.near.",
            "alice near",
            "0x" + "ab" * 20,  # eth-implicit: not provable with an ed25519 NEP-413 proof
        ],
    )
    def test_near_rejects_invalid(self, account_id):
        with pytest.raises(InvalidAddress):
            validate_address("near", account_id)

    def test_unknown_chain(self):
        with pytest.raises(InvalidAddress):
            validate_address("ethereum", "0x" + "ab" * 20)


# --------------------------------------------------------------------------- Solana


class TestSolana:
    def test_valid_base58_signature_passes(self):
        kp = SolanaKeypair()
        verify_wallet_signature("solana", str(kp.pubkey()), MESSAGE, sign_solana(kp, MESSAGE))

    def test_valid_base64_signature_passes(self):
        kp = SolanaKeypair()
        sig = base64.b64encode(bytes(kp.sign_message(MESSAGE.encode()))).decode()
        verify_wallet_signature("solana", str(kp.pubkey()), MESSAGE, sig)

    def test_another_key_is_refused(self):
        kp, other = SolanaKeypair(), SolanaKeypair()
        with pytest.raises(BadSignature):
            verify_wallet_signature("solana", str(kp.pubkey()), MESSAGE, sign_solana(other, MESSAGE))

    def test_another_message_is_refused(self):
        kp = SolanaKeypair()
        with pytest.raises(BadSignature):
            verify_wallet_signature("solana", str(kp.pubkey()), MESSAGE + "!", sign_solana(kp, MESSAGE))

    def test_tampered_and_malformed_signatures_are_refused(self):
        kp = SolanaKeypair()
        raw = bytearray(bytes(kp.sign_message(MESSAGE.encode())))
        raw[0] ^= 0xFF
        for sig in (
            base58.b58encode(bytes(raw)).decode(),
            base58.b58encode(bytes(raw[:63])).decode(),  # truncated
            "not a signature",
            "",
            "A" * 10_000,
        ):
            with pytest.raises(BadSignature):
                verify_wallet_signature("solana", str(kp.pubkey()), MESSAGE, sig)

    def test_invalid_address_is_a_bad_signature(self):
        kp = SolanaKeypair()
        with pytest.raises(BadSignature, match="invalid address"):
            verify_wallet_signature("solana", "abc", MESSAGE, sign_solana(kp, MESSAGE))


# --------------------------------------------------------------------------- Stellar


class TestStellar:
    def test_valid_sep53_signature_passes(self):
        kp = StellarKeypair.random()
        verify_wallet_signature("stellar", kp.public_key, MESSAGE, sign_stellar(kp, MESSAGE))

    def test_sep53_hashes_the_prefixed_message(self):
        kp = StellarKeypair.random()
        digest = hashlib.sha256(b"Stellar Signed Message:\n" + MESSAGE.encode()).digest()
        sig = base64.b64encode(kp.sign(digest)).decode()
        verify_wallet_signature("stellar", kp.public_key, MESSAGE, sig)

    def test_raw_ed25519_over_the_message_is_not_sep53(self):
        kp = StellarKeypair.random()
        sig = base64.b64encode(kp.sign(MESSAGE.encode())).decode()
        with pytest.raises(BadSignature):
            verify_wallet_signature("stellar", kp.public_key, MESSAGE, sig)

    def test_another_key_message_or_tampering_is_refused(self):
        kp, other = StellarKeypair.random(), StellarKeypair.random()
        good = sign_stellar(kp, MESSAGE)
        cases = [
            (MESSAGE, sign_stellar(other, MESSAGE)),
            ("another message", good),
            (MESSAGE, _tamper_b64(good)),
            (MESSAGE, good[:-8]),  # truncated base64
            (MESSAGE, base64.b64encode(b"\x00" * 63).decode()),
            (MESSAGE, "%%%"),
        ]
        for message, sig in cases:
            with pytest.raises(BadSignature):
                verify_wallet_signature("stellar", kp.public_key, message, sig)


# --------------------------------------------------------------------------- NEAR


class TestNearNep413:
    def test_payload_layout_matches_nep413(self):
        nonce = bytes(range(32))
        expected = (
            struct.pack("<I", 2**31 + 413)
            + struct.pack("<I", 5)
            + b"hello"
            + nonce
            + struct.pack("<I", len(RECIPIENT))
            + RECIPIENT.encode()
            + b"\x00"
        )
        assert nep413_hash("hello", nonce, RECIPIENT) == hashlib.sha256(expected).digest()
        with_cb = expected[:-1] + b"\x01" + struct.pack("<I", 5) + b"https"
        assert nep413_hash("hello", nonce, RECIPIENT, "https") == hashlib.sha256(with_cb).digest()

    def test_named_account_valid_proof_passes(self):
        key, public_key, _ = near_keypair()
        nonce = os.urandom(32)
        sig, pk = sign_near_nep413(key, MESSAGE, nonce, RECIPIENT)
        assert pk == public_key
        verify_wallet_signature("near", "alice.testnet", MESSAGE, sig, pk, nonce, RECIPIENT)

    def test_implicit_account_with_its_own_key_passes(self):
        key, _, implicit = near_keypair()
        nonce = os.urandom(32)
        sig, pk = sign_near_nep413(bytes(key) + bytes(key.verify_key), MESSAGE, nonce, RECIPIENT)
        verify_wallet_signature("near", implicit, MESSAGE, sig, pk, nonce, RECIPIENT)

    def test_secret_key_string_form_signs_the_same(self):
        key, _, _ = near_keypair()
        secret = "ed25519:" + base58.b58encode(bytes(key) + bytes(key.verify_key)).decode()
        nonce = os.urandom(32)
        assert sign_near_nep413(secret, MESSAGE, nonce, RECIPIENT) == sign_near_nep413(
            key, MESSAGE, nonce, RECIPIENT
        )

    def test_implicit_account_with_another_key_is_refused(self):
        _, _, implicit = near_keypair()
        other = SigningKey.generate()
        nonce = os.urandom(32)
        sig, pk = sign_near_nep413(other, MESSAGE, nonce, RECIPIENT)
        with pytest.raises(BadSignature, match="implicit"):
            verify_wallet_signature("near", implicit, MESSAGE, sig, pk, nonce, RECIPIENT)

    def test_callback_url_is_part_of_the_signed_payload(self):
        key, _, _ = near_keypair()
        nonce = os.urandom(32)
        sig, pk = sign_near_nep413(key, MESSAGE, nonce, RECIPIENT, callback_url="https://x.y/cb")
        verify_wallet_signature(
            "near", "alice.near", MESSAGE, sig, pk, nonce, RECIPIENT, callback_url="https://x.y/cb"
        )
        with pytest.raises(BadSignature):
            verify_wallet_signature("near", "alice.near", MESSAGE, sig, pk, nonce, RECIPIENT)

    def test_wrong_message_nonce_recipient_key_or_tampering_is_refused(self):
        key, _, _ = near_keypair()
        _, other_pk, _ = near_keypair()
        nonce = os.urandom(32)
        sig, pk = sign_near_nep413(key, MESSAGE, nonce, RECIPIENT)
        cases = [
            dict(message="other"),
            dict(nonce=os.urandom(32)),
            dict(recipient="evil.example"),
            dict(public_key=other_pk),
            dict(signature=_tamper_b64(sig)),
            dict(signature=sig[:-4]),
            dict(public_key=None),
            dict(public_key="ed25519:abc"),
            dict(public_key="secp256k1:" + pk.split(":")[1]),
            dict(nonce=None),
            dict(nonce=nonce[:31]),
            dict(recipient=None),
        ]
        for override in cases:
            args = (
                dict(
                    message=MESSAGE,
                    signature=sig,
                    public_key=pk,
                    nonce=nonce,
                    recipient=RECIPIENT,
                )
                | override
            )
            with pytest.raises(BadSignature):
                verify_wallet_signature("near", "alice.near", **args)


# --------------------------------------------------------------------------- live NEAR keys


@pytest.fixture(scope="module")
def near_rpc():
    with FakeNearRpc() as rpc:
        yield rpc


class TestNearAccessKeyChecker:
    def test_full_access_key_is_ownership(self, near_rpc):
        _, public_key, _ = near_keypair()
        near_rpc.add_access_key("owner.testnet", public_key)
        checker = NearAccessKeyChecker(near_rpc.url, timeout=2)
        assert checker.is_full_access_key("owner.testnet", public_key) is True

    def test_function_call_key_unknown_key_and_unknown_account_are_not(self, near_rpc):
        _, fc_key, _ = near_keypair()
        _, stranger, _ = near_keypair()
        near_rpc.add_access_key("limited.testnet", fc_key, full_access=False)
        checker = NearAccessKeyChecker(near_rpc.url, timeout=2)
        assert checker.is_full_access_key("limited.testnet", fc_key) is False
        assert checker.is_full_access_key("limited.testnet", stranger) is False
        assert checker.is_full_access_key("nobody.testnet", stranger) is False
        assert checker.is_full_access_key("limited.testnet", "not-a-key") is False

    def test_timeout_and_server_errors_are_chain_unavailable(self, near_rpc):
        _, public_key, _ = near_keypair()
        near_rpc.add_access_key("slow.testnet", public_key)
        checker = NearAccessKeyChecker(near_rpc.url, timeout=0.3)
        near_rpc.fault_delay = 1.0
        near_rpc.set_fault("timeout", times=1)
        with pytest.raises(ChainUnavailable):
            checker.is_full_access_key("slow.testnet", public_key)
        near_rpc.set_fault("503", times=1)
        with pytest.raises(ChainUnavailable):
            checker.is_full_access_key("slow.testnet", public_key)
        assert checker.is_full_access_key("slow.testnet", public_key) is True

    def test_unreachable_node_is_chain_unavailable(self):
        checker = NearAccessKeyChecker("http://127.0.0.1:9", timeout=0.5)
        with pytest.raises(ChainUnavailable):
            checker.is_full_access_key("alice.near", near_keypair()[1])
