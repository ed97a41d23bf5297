"""Which payment verifier answers, chosen from settings at call time (CHAIN_MODE).

Sandbox: the signed transaction the client or webhook sends IS the evidence (Stellar
envelope XDR, NEAR borsh SignedTransaction), checked offline with the SDKs.
Live: only the chain is evidence. A hash, an envelope or a signed transaction sent to us is
reduced to a transaction id and read back from Horizon / NEAR JSON-RPC, so amounts, memo,
destination, success and finality always come from the chain.

Settings are read on every call (not at import) so tests and operators can switch mode
and endpoints without restarting anything.
"""

from __future__ import annotations

from typing import Literal

from django.conf import settings

from settlement.chains.base import PaymentInvalid, VerifiedPayment
from settlement.chains.near import (
    BorshError,
    NearRpcVerifier,
    NearSandboxVerifier,
    decode_signed_transaction,
)
from settlement.chains.stellar import (
    StellarHorizonVerifier,
    StellarSandboxVerifier,
    parse_envelope,
)

SourceChain = Literal["stellar", "near"]


def chain_mode_is_live() -> bool:
    return settings.CHAIN_MODE == "live"


def stellar_horizon() -> StellarHorizonVerifier:
    """The live Stellar reader (also the watcher's source of payment hints)."""
    return StellarHorizonVerifier(
        settings.STELLAR_HORIZON_URL,
        settings.STELLAR_NETWORK_PASSPHRASE,
        settings.STELLAR_TREASURY_ADDRESS,
        timeout=settings.CHAIN_HTTP_TIMEOUT_SECONDS,
    )


def near_rpc() -> NearRpcVerifier:
    return NearRpcVerifier(
        settings.NEAR_RPC_URL,
        settings.NEAR_PAYMENT_ACCOUNT,
        timeout=settings.CHAIN_HTTP_TIMEOUT_SECONDS,
    )


def payment_verify(*, chain: str, tx_hash: str | None = None, sender: str | None = None,
                   envelope_xdr: str | None = None,
                   signed_transaction_base64: str | None = None) -> VerifiedPayment:
    """Verify one payment by whatever reference the door received.

    Raises `PaymentInvalid` (a verdict: refuse) or `ChainUnavailable` (no verdict: retry).
    Performs network I/O in live mode: never call it inside a database transaction.
    """
    if chain == "stellar":
        return _verify_stellar(tx_hash=tx_hash, envelope_xdr=envelope_xdr)
    if chain == "near":
        return _verify_near(tx_hash=tx_hash, sender=sender,
                            signed_transaction_base64=signed_transaction_base64)
    raise PaymentInvalid(PaymentInvalid.MALFORMED, f"payments are accepted on stellar or near, not {chain!r}")


def _verify_stellar(*, tx_hash: str | None, envelope_xdr: str | None) -> VerifiedPayment:
    if not chain_mode_is_live():
        if not envelope_xdr:
            raise PaymentInvalid(
                PaymentInvalid.MALFORMED,
                "sandbox mode has no ledger to look a hash up on: send envelope_xdr",
            )
        verifier = StellarSandboxVerifier(settings.STELLAR_NETWORK_PASSPHRASE,
                                          settings.STELLAR_TREASURY_ADDRESS)
        return verifier.verify_envelope(envelope_xdr)
    if not tx_hash:
        if not envelope_xdr:
            raise PaymentInvalid(PaymentInvalid.MALFORMED, "send tx_hash (or envelope_xdr)")
        # The envelope only names the transaction; Horizon says what it did.
        tx_hash = parse_envelope(envelope_xdr, settings.STELLAR_NETWORK_PASSPHRASE).hash_hex()
    horizon = stellar_horizon()
    try:
        return horizon.verify_tx(tx_hash)
    finally:
        horizon.close()


def _verify_near(*, tx_hash: str | None, sender: str | None,
                 signed_transaction_base64: str | None) -> VerifiedPayment:
    if not chain_mode_is_live():
        if not signed_transaction_base64:
            raise PaymentInvalid(
                PaymentInvalid.MALFORMED,
                "sandbox mode has no chain to look a hash up on: send signed_transaction_base64",
            )
        return NearSandboxVerifier(settings.NEAR_PAYMENT_ACCOUNT).verify_signed_transaction(
            signed_transaction_base64)
    if signed_transaction_base64 and not (tx_hash and sender):
        # The signed bytes only name the transaction (hash + signer); the RPC says what it did.
        try:
            signed = decode_signed_transaction(signed_transaction_base64)
        except BorshError as exc:
            raise PaymentInvalid(PaymentInvalid.MALFORMED, str(exc)) from exc
        tx_hash, sender = signed.transaction.hash_b58, signed.transaction.signer_id
    if not tx_hash or not sender:
        raise PaymentInvalid(
            PaymentInvalid.MALFORMED,
            "NEAR needs tx_hash and the sender account id (or signed_transaction_base64)",
        )
    rpc = near_rpc()
    try:
        return rpc.verify_tx(tx_hash, sender)
    finally:
        rpc.close()
