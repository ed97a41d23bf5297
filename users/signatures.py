"""Wallet ownership proofs: address validation and signed-message verification for Solana,
Stellar (SEP-53) and NEAR (NEP-413), plus the signing counterparts used by tests and the
demo client. Plain Python (no Django): config comes in as arguments.

What each proof shows:
* Solana: an ed25519 signature by the address's key over the UTF-8 message bytes.
* Stellar (SEP-53): ed25519 by the account key over sha256("Stellar Signed Message:\\n" + msg).
* NEAR (NEP-413): ed25519 by `public_key` over sha256(u32le(2**31 + 413) ++ borsh(payload)),
  payload = {message: string, nonce: [u8; 32], recipient: string, callback_url: Option<string>}.
  A valid signature proves control of the KEY only. For an implicit account the key is the
  account id, so that is ownership; for a named account it is ownership only once the key is
  shown to be a FullAccess key of the account (`NearAccessKeyChecker`, live mode).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from typing import Any

import base58
from nacl.exceptions import BadSignatureError as NaclBadSignature
from nacl.signing import SigningKey, VerifyKey
from solders.keypair import Keypair as SolanaKeypair
from solders.pubkey import Pubkey
from solders.signature import Signature
from stellar_sdk import Keypair as StellarKeypair
from stellar_sdk import StrKey
from stellar_sdk.exceptions import BadSignatureError as StellarBadSignature

from settlement.chains.base import ChainUnavailable
from settlement.chains.near import (
    NearJsonRpc,
    NearRpcError,
    is_eth_implicit_account,
    is_implicit_account,
    is_valid_account_id,
    parse_ed25519_public_key,
)

__all__ = [
    "BadSignature",
    "ChainUnavailable",
    "InvalidAddress",
    "NEP413_TAG",
    "NearAccessKeyChecker",
    "SUPPORTED_CHAINS",
    "nep413_hash",
    "sign_near_nep413",
    "sign_solana",
    "sign_stellar",
    "validate_address",
    "verify_wallet_signature",
]

SUPPORTED_CHAINS = ("solana", "stellar", "near")
NEP413_TAG = 2**31 + 413
NEP413_NONCE_BYTES = 32
_MAX_ADDRESS_LEN = 128
_MAX_SIGNATURE_LEN = 512


class InvalidAddress(ValueError):
    """The address is not a valid account identifier on that chain."""


class BadSignature(ValueError):
    """The ownership proof was refused; `reason` is short and safe to show to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------------------


def validate_address(chain: str, address: str) -> str:
    """Return the normalized address or raise InvalidAddress."""
    if not isinstance(address, str) or not address or len(address) > _MAX_ADDRESS_LEN:
        raise InvalidAddress("address must be a non-empty string")
    if chain == "solana":
        try:
            # from_string checks the decoded length is exactly 32 bytes.
            return str(Pubkey.from_string(address))
        except ValueError as exc:
            raise InvalidAddress("not a base58 32-byte Solana public key") from exc
    if chain == "stellar":
        if not StrKey.is_valid_ed25519_public_key(address):
            raise InvalidAddress("not a Stellar G... account id (StrKey checksum)")
        return address
    if chain == "near":
        if is_eth_implicit_account(address):
            # Controlled by a secp256k1 wallet contract: no NEP-413 ed25519 proof possible.
            raise InvalidAddress("NEAR eth-implicit (0x...) accounts are not supported")
        if not is_valid_account_id(address):
            raise InvalidAddress("not a valid NEAR account id")
        return address
    raise InvalidAddress(f"unsupported chain {chain!r}")


# ---------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------


def _b64_signature(signature: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadSignature(f"{what} signature must be base64") from exc
    if len(raw) != 64:
        raise BadSignature(f"{what} signature must be 64 bytes")
    return raw


def _solana_signature_candidates(signature: str) -> list[bytes]:
    """Wallets send base58 (Phantom's bs58) or base64; try both, keep 64-byte results."""
    out: list[bytes] = []
    try:
        raw = base58.b58decode(signature)
        if len(raw) == 64:
            out.append(raw)
    except ValueError:
        pass
    try:
        raw = base64.b64decode(signature, validate=True)
        if len(raw) == 64 and raw not in out:
            out.append(raw)
    except (binascii.Error, ValueError):
        pass
    return out


def nep413_payload(message: str, nonce: bytes, recipient: str, callback_url: str | None = None) -> bytes:
    """borsh(NEP-413 Payload)."""

    def borsh_string(value: str) -> bytes:
        raw = value.encode("utf-8")
        return struct.pack("<I", len(raw)) + raw

    out = borsh_string(message) + bytes(nonce) + borsh_string(recipient)
    out += b"\x00" if callback_url is None else b"\x01" + borsh_string(callback_url)
    return out


def nep413_hash(message: str, nonce: bytes, recipient: str, callback_url: str | None = None) -> bytes:
    """The 32 bytes a NEP-413 signature signs."""
    if len(nonce) != NEP413_NONCE_BYTES:
        raise ValueError("NEP-413 nonce must be 32 bytes")
    tag = struct.pack("<I", NEP413_TAG)
    return hashlib.sha256(tag + nep413_payload(message, nonce, recipient, callback_url)).digest()


def verify_wallet_signature(
    chain: str,
    address: str,
    message: str,
    signature: str,
    public_key: str | None = None,
    nonce: bytes | None = None,
    recipient: str | None = None,
    *,
    callback_url: str | None = None,
) -> None:
    """Raise BadSignature unless `signature` proves control of `address` over `message`.

    NEAR needs `public_key` ('ed25519:...'), the 32-byte `nonce` and the `recipient` that
    were issued with the challenge (and `callback_url` if the wallet signed one). For a named
    NEAR account, live mode must also call `NearAccessKeyChecker.is_full_access_key`.
    """
    try:
        address = validate_address(chain, address)
    except InvalidAddress as exc:
        raise BadSignature(f"invalid address: {exc}") from exc
    if not isinstance(message, str) or not isinstance(signature, str):
        raise BadSignature("message and signature must be strings")
    if not signature or len(signature) > _MAX_SIGNATURE_LEN:
        raise BadSignature("signature has the wrong length")
    msg_bytes = message.encode("utf-8")

    if chain == "solana":
        pubkey = Pubkey.from_string(address)
        candidates = _solana_signature_candidates(signature)
        if not candidates:
            raise BadSignature("Solana signature must be 64 bytes in base58 or base64")
        if not any(Signature.from_bytes(raw).verify(pubkey, msg_bytes) for raw in candidates):
            raise BadSignature("signature does not match the address and message")
        return

    if chain == "stellar":
        raw = _b64_signature(signature, "Stellar")
        try:
            StellarKeypair.from_public_key(address).verify_message(message, raw)
        except StellarBadSignature as exc:
            raise BadSignature("signature does not match the address and message") from exc
        return

    # chain == "near" (validate_address refused anything else)
    if public_key is None:
        raise BadSignature("NEAR proof needs the public key")
    try:
        key = parse_ed25519_public_key(public_key)
    except ValueError as exc:
        raise BadSignature(str(exc)) from exc
    if nonce is None or len(nonce) != NEP413_NONCE_BYTES:
        raise BadSignature("NEAR proof needs the 32-byte challenge nonce")
    if not recipient:
        raise BadSignature("NEAR proof needs the recipient")
    if is_implicit_account(address) and key.hex() != address:
        raise BadSignature("public key does not belong to the implicit account")
    raw = _b64_signature(signature, "NEAR")
    try:
        VerifyKey(key).verify(nep413_hash(message, nonce, recipient, callback_url), raw)
    except NaclBadSignature as exc:
        raise BadSignature("signature does not match the key and message") from exc


# ---------------------------------------------------------------------------------------
# Signing counterparts (tests, demo client)
# ---------------------------------------------------------------------------------------


def sign_solana(keypair: SolanaKeypair, msg: str) -> str:
    """What Phantom's signMessage gives, base58-encoded."""
    return str(keypair.sign_message(msg.encode("utf-8")))


def sign_stellar(keypair: StellarKeypair, msg: str) -> str:
    """SEP-53 signature, base64 (what Freighter's signMessage returns)."""
    return base64.b64encode(keypair.sign_message(msg)).decode()


def _near_signing_key(private_key: Any) -> SigningKey:
    if isinstance(private_key, SigningKey):
        return private_key
    if isinstance(private_key, str):
        private_key = base58.b58decode(private_key.removeprefix("ed25519:"))
    raw = bytes(private_key)
    if len(raw) not in (32, 64):
        raise ValueError("NEAR ed25519 private key must be 32 (seed) or 64 (seed+public) bytes")
    return SigningKey(raw[:32])


def sign_near_nep413(
    private_key: SigningKey | bytes | str,
    message: str,
    nonce: bytes,
    recipient: str,
    callback_url: str | None = None,
) -> tuple[str, str]:
    """NEP-413 signMessage -> (signature base64, 'ed25519:<base58 public key>').
    `private_key`: nacl SigningKey, 32-byte seed, 64-byte NEAR secret, or 'ed25519:<b58>'."""
    key = _near_signing_key(private_key)
    signature = key.sign(nep413_hash(message, nonce, recipient, callback_url)).signature
    public = "ed25519:" + base58.b58encode(bytes(key.verify_key)).decode()
    return base64.b64encode(signature).decode(), public


# ---------------------------------------------------------------------------------------
# Live NEAR: is the key a FullAccess key of the account?
# ---------------------------------------------------------------------------------------

_NO_SUCH_KEY_CAUSES = {"UNKNOWN_ACCESS_KEY", "UNKNOWN_ACCOUNT", "INVALID_ACCOUNT"}


class NearAccessKeyChecker:
    """`query view_access_key` at final finality. Timeouts/5xx raise ChainUnavailable."""

    def __init__(self, rpc_url: str, timeout: float = 10.0) -> None:
        self.rpc = NearJsonRpc(rpc_url, timeout=timeout)

    def close(self) -> None:
        self.rpc.close()

    def is_full_access_key(self, account_id: str, public_key: str) -> bool:
        if not is_valid_account_id(account_id):
            return False
        try:
            parse_ed25519_public_key(public_key)
        except ValueError:
            return False
        try:
            result = self.rpc.call(
                "query",
                {
                    "request_type": "view_access_key",
                    "finality": "final",
                    "account_id": account_id,
                    "public_key": public_key,
                },
            )
        except NearRpcError as exc:
            if exc.cause in _NO_SUCH_KEY_CAUSES:
                return False
            raise ChainUnavailable(f"NEAR RPC error {exc.cause or exc.name}: {exc.message}") from exc
        if not isinstance(result, dict):
            raise ChainUnavailable("unexpected view_access_key response")
        if "error" in result:
            # Older nodes report a missing key inside `result` instead of as an error.
            return False
        return result.get("permission") == "FullAccess"
