"""Outgoing payments from our Stellar and NEAR treasuries (withdrawals), behind one interface.

`PayoutChain` builds and signs a native payment with the real SDK (stellar-sdk
TransactionBuilder; py-near `sign_and_serialize_transaction` with a Transfer action), checks
a signed payout offline, submits it, asks the chain what became of it, and reads the
treasury's balance. Services never import an SDK; they ask `payout_chain(chain)`.

Sandbox mode has no Stellar or NEAR ledger: "submitting" a payout there means verifying the
signed bytes (our treasury key signed exactly this payment to exactly this destination),
which is the same evidence the sandbox accepts for incoming payments. Sequence numbers,
nonces and block hashes are then placeholders, and there is no balance to read.

Live mode talks to Horizon (`STELLAR_HORIZON_URL`) and NEAR JSON-RPC (`NEAR_RPC_URL`).
Outcomes are explicit so the caller can keep payouts exactly-once:
  success   the payment is on chain and final (fee = what the chain charged)
  failed    on chain but failed (fee charged), or refused before inclusion (fee 0)
  unknown   no verdict (timeout, 5xx): look the hash up again later, never re-sign
  not_found the chain has no such transaction (yet)
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import base58
from django.conf import settings
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from settlement.chains.base import (
    ChainUnavailable,
    PaymentInvalid,
    parse_u128,
    stroops_to_xlm,
    xlm_to_stroops,
)

PayoutState = Literal["success", "failed", "unknown", "not_found"]
# Seconds a signed Stellar payout stays valid (its time bounds); after that, a payout the
# chain does not know can never land.
STELLAR_PAYOUT_TIMEOUT_SECONDS = 300
STELLAR_BASE_FEE_STROOPS = 100


class PayoutInvalid(Exception):
    """A signed payout does not pay exactly what we meant (never submit it)."""


@dataclass(frozen=True)
class SignedPayout:
    tx_hash: str
    signed_transaction: str  # base64 envelope XDR (Stellar) / base64 borsh SignedTransaction
    # Everything needed later to judge the payout: sequence or nonce, validity window, fee bid.
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PayoutResult:
    state: PayoutState
    fee: int = 0  # network fee the treasury paid, smallest unit
    reason: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


class PayoutChain(Protocol):
    chain: str
    asset: str
    treasury_address: str

    def prepare(self) -> dict[str, Any]:
        """Chain state a new payout needs (live: sequence / nonce, block hash)."""

    def sign(self, *, destination: str, amount: int, unique_id: str,
             prepared: dict[str, Any]) -> SignedPayout: ...

    def verify_offline(self, signed: SignedPayout, *, destination: str, amount: int) -> int:
        """Check signature, destination and amount; returns the fee the bytes allow."""

    def submit(self, signed: SignedPayout) -> PayoutResult: ...

    def status(self, signed: SignedPayout) -> PayoutResult: ...

    def provably_dead(self, signed: SignedPayout) -> bool:
        """True when the chain can no longer include this payout (safe to give the money back)."""

    def treasury_balance(self) -> int: ...


def _is_live() -> bool:
    return bool(settings.CHAIN_MODE == "live")


# -- Stellar -----------------------------------------------------------------------------------


class StellarPayouts:
    chain = "stellar"
    asset = "XLM"

    def __init__(self) -> None:
        from stellar_sdk import Keypair

        self.passphrase = settings.STELLAR_NETWORK_PASSPHRASE
        self.keypair = Keypair.from_secret(settings.STELLAR_TREASURY_SECRET)
        self.treasury_address = self.keypair.public_key
        self.timeout = float(settings.CHAIN_HTTP_TIMEOUT_SECONDS)

    def _server(self) -> Any:
        from stellar_sdk import Server
        from stellar_sdk.client.requests_client import RequestsClient

        client = RequestsClient(num_retries=0, request_timeout=self.timeout,  # type: ignore[arg-type]
                                post_timeout=self.timeout)  # type: ignore[arg-type]
        return Server(horizon_url=settings.STELLAR_HORIZON_URL, client=client)

    def _call(self, fn: Any) -> Any:
        from stellar_sdk import exceptions as sdk

        try:
            return fn()
        except sdk.NotFoundError:
            raise
        except sdk.BadRequestError:
            raise
        except (sdk.BaseRequestError, ValueError) as exc:
            raise ChainUnavailable(f"Horizon unavailable: {type(exc).__name__}") from exc

    def prepare(self) -> dict[str, Any]:
        if not _is_live():
            # No ledger in sandbox: the sequence is a placeholder; the hash memo keeps every
            # payout's hash unique.
            return {"sequence": 0}
        server = self._server()
        try:
            account = self._call(lambda: server.load_account(self.treasury_address))
        finally:
            server.close()
        return {"sequence": int(account.sequence)}

    def sign(self, *, destination: str, amount: int, unique_id: str,
             prepared: dict[str, Any]) -> SignedPayout:
        from stellar_sdk import Account, Asset, TransactionBuilder

        source = Account(self.treasury_address, int(prepared["sequence"]))
        valid_until = int(time.time()) + STELLAR_PAYOUT_TIMEOUT_SECONDS
        envelope = (
            TransactionBuilder(source, network_passphrase=self.passphrase,
                               base_fee=STELLAR_BASE_FEE_STROOPS)
            .append_payment_op(destination=destination, asset=Asset.native(),
                               amount=stroops_to_xlm(amount))
            .add_hash_memo(hashlib.sha256(f"withdrawal:{unique_id}".encode()).digest())
            .add_time_bounds(0, valid_until)
            .build()
        )
        envelope.sign(self.keypair)
        return SignedPayout(
            tx_hash=envelope.hash_hex(), signed_transaction=envelope.to_xdr(),
            details={"sequence": envelope.transaction.sequence, "valid_until": valid_until,
                     "max_fee": envelope.transaction.fee, "source": self.treasury_address})

    def verify_offline(self, signed: SignedPayout, *, destination: str, amount: int) -> int:
        from stellar_sdk import Asset, Keypair, TransactionEnvelope
        from stellar_sdk import exceptions as sdk
        from stellar_sdk.operation import Payment

        from settlement.chains.stellar import parse_envelope

        try:
            env = parse_envelope(signed.signed_transaction, self.passphrase)
        except PaymentInvalid as exc:
            raise PayoutInvalid(exc.message) from exc
        if not isinstance(env, TransactionEnvelope):
            raise PayoutInvalid("a payout is a plain transaction, not a fee bump")
        if env.hash_hex() != signed.tx_hash:
            raise PayoutInvalid("stored hash does not match the signed envelope")
        tx = env.transaction
        if tx.source.account_id != self.treasury_address:
            raise PayoutInvalid("payout does not spend from the treasury")
        key = Keypair.from_public_key(self.treasury_address)
        signed_ok = False
        for decorated in env.signatures:
            try:
                key.verify(env.hash(), decorated.signature)
                signed_ok = True
            except sdk.BadSignatureError:
                continue
        if not signed_ok:
            raise PayoutInvalid("payout is not signed by the treasury key")
        if len(tx.operations) != 1 or not isinstance(tx.operations[0], Payment):
            raise PayoutInvalid("payout must be exactly one payment operation")
        op = tx.operations[0]
        if op.source is not None and op.source.account_id != self.treasury_address:
            raise PayoutInvalid("payment operation has a foreign source")
        if op.destination.account_id != destination or op.asset != Asset.native():
            raise PayoutInvalid("payout goes to the wrong destination or asset")
        body = op.to_xdr_object().body.payment_op
        if body is None or int(body.amount.int64) != amount:
            raise PayoutInvalid("payout amount differs from the withdrawal")
        return int(tx.fee)

    def _result_fee(self, result_xdr: str | None) -> int:
        from stellar_sdk import xdr

        if not result_xdr:
            return 0
        try:
            return int(xdr.TransactionResult.from_xdr(result_xdr).fee_charged.int64)
        except Exception:  # noqa: BLE001 - an unreadable result is reported as no fee known
            return 0

    def submit(self, signed: SignedPayout) -> PayoutResult:
        if not _is_live():
            # The sandbox's chain is the signature check itself; the bid fee is what a
            # ledger would at most charge, and it is what we book.
            return PayoutResult("success", fee=int(signed.details.get("max_fee", 0)),
                                raw={"mode": "sandbox"})
        from stellar_sdk import TransactionBuilder
        from stellar_sdk import exceptions as sdk

        server = self._server()
        try:
            try:
                envelope = TransactionBuilder.from_xdr(signed.signed_transaction, self.passphrase)
                record = server.submit_transaction(envelope, skip_memo_required_check=True)
            except sdk.BadRequestError as exc:
                codes = (exc.extras or {}).get("result_codes") or {}
                code = str(codes.get("transaction") or "")
                if code == "tx_failed":  # included in a ledger, failed: the fee was charged
                    return PayoutResult("failed", fee=self._result_fee(exc.result_xdr),
                                        reason=f"tx_failed {codes.get('operations')}",
                                        raw={"result_codes": codes})
                if code in ("tx_bad_seq", "tx_duplicate", "tx_already_exists"):
                    # Maybe our own earlier submission landed: only the hash can tell.
                    return self.status(signed)
                return PayoutResult("failed", fee=0, reason=code or "refused by Horizon",
                                    raw={"result_codes": codes})
            except (sdk.BaseRequestError, ValueError) as exc:
                return PayoutResult("unknown", reason=f"Horizon: {type(exc).__name__}")
        finally:
            server.close()
        if record.get("successful") is True:
            return PayoutResult("success", fee=int(record.get("fee_charged") or 0),
                                raw={"ledger": record.get("ledger"), "hash": record.get("hash")})
        return PayoutResult("failed", fee=int(record.get("fee_charged") or 0),
                            reason="transaction failed", raw={"ledger": record.get("ledger")})

    def status(self, signed: SignedPayout) -> PayoutResult:
        if not _is_live():
            return PayoutResult("not_found", reason="sandbox has no ledger")
        from stellar_sdk import exceptions as sdk

        server = self._server()
        try:
            record = server.transactions().transaction(signed.tx_hash).call()
        except sdk.NotFoundError:
            return PayoutResult("not_found")
        except (sdk.BaseRequestError, ValueError) as exc:
            return PayoutResult("unknown", reason=f"Horizon: {type(exc).__name__}")
        finally:
            server.close()
        state: PayoutState = "success" if record.get("successful") is True else "failed"
        return PayoutResult(state, fee=int(record.get("fee_charged") or 0),
                            raw={"ledger": record.get("ledger")})

    def provably_dead(self, signed: SignedPayout) -> bool:
        # Horizon serves closed ledgers only; past the upper time bound (plus a ledger's
        # margin) a transaction it does not know can never be included.
        return time.time() > int(signed.details.get("valid_until", 0)) + 30

    def treasury_balance(self) -> int:
        server = self._server()
        try:
            account = self._call(lambda: server.accounts().account_id(self.treasury_address).call())
        finally:
            server.close()
        for line in account.get("balances", []):
            if line.get("asset_type") == "native":
                return xlm_to_stroops(str(line["balance"]))
        return 0


# -- NEAR --------------------------------------------------------------------------------------


class NearPayouts:
    chain = "near"
    asset = "NEAR"

    def __init__(self) -> None:
        seed = bytes.fromhex(settings.NEAR_TREASURY_KEY)
        self.signing_key = SigningKey(seed[:32])
        self.public_key_bytes = bytes(self.signing_key.verify_key)
        self.public_key = "ed25519:" + base58.b58encode(self.public_key_bytes).decode()
        self.treasury_address = settings.NEAR_PAYMENT_ACCOUNT

    def _rpc(self) -> Any:
        from settlement.chains.near import NearJsonRpc

        return NearJsonRpc(settings.NEAR_RPC_URL, timeout=float(settings.CHAIN_HTTP_TIMEOUT_SECONDS))

    def prepare(self) -> dict[str, Any]:
        if not _is_live():
            return {"nonce": None, "block_hash": None}
        rpc = self._rpc()
        try:
            key = rpc.call("query", {"request_type": "view_access_key", "finality": "final",
                                     "account_id": self.treasury_address,
                                     "public_key": self.public_key})
            if "error" in key:
                raise ChainUnavailable(f"treasury access key not found: {key['error']}")
            block = rpc.call("block", {"finality": "final"})
        finally:
            rpc.close()
        return {"nonce": int(key["nonce"]) + 1, "block_hash": block["header"]["hash"],
                "block_height": int(block["header"]["height"])}

    def sign(self, *, destination: str, amount: int, unique_id: str,
             prepared: dict[str, Any]) -> SignedPayout:
        from py_near.transactions import sign_and_serialize_transaction
        from py_near_primitives import TransferAction

        from settlement.chains.near import decode_signed_transaction

        digest = hashlib.sha256(f"withdrawal:{unique_id}".encode()).digest()
        nonce = prepared.get("nonce")
        block_hash_b58 = prepared.get("block_hash")
        if nonce is None:
            # Sandbox: no access key to read. A nonce derived from the withdrawal id keeps
            # every payout's hash unique (a NEAR transfer carries no memo).
            nonce = int.from_bytes(digest[:6], "big")
        block_hash = base58.b58decode(block_hash_b58) if block_hash_b58 else digest
        secret = bytes(self.signing_key) + self.public_key_bytes
        signed_b64 = sign_and_serialize_transaction(
            self.treasury_address, secret, destination, int(nonce), [TransferAction(amount)],
            block_hash)
        tx_hash = decode_signed_transaction(signed_b64).transaction.hash_b58
        return SignedPayout(tx_hash=tx_hash, signed_transaction=signed_b64,
                            details={"nonce": int(nonce), "block_hash": base58.b58encode(block_hash).decode(),
                                     "block_height": prepared.get("block_height"),
                                     "signer": self.treasury_address, "public_key": self.public_key})

    def verify_offline(self, signed: SignedPayout, *, destination: str, amount: int) -> int:
        from settlement.chains.near import BorshError, Transfer, decode_signed_transaction

        try:
            decoded = decode_signed_transaction(signed.signed_transaction)
        except BorshError as exc:
            raise PayoutInvalid(str(exc)) from exc
        tx = decoded.transaction
        if tx.hash_b58 != signed.tx_hash:
            raise PayoutInvalid("stored hash does not match the signed transaction")
        if tx.signer_id != self.treasury_address or tx.public_key.data != self.public_key_bytes:
            raise PayoutInvalid("payout is not from the treasury account and key")
        try:
            VerifyKey(self.public_key_bytes).verify(tx.hash, decoded.signature)
        except BadSignatureError as exc:
            raise PayoutInvalid("payout signature does not verify") from exc
        if tx.receiver_id != destination:
            raise PayoutInvalid("payout goes to the wrong account")
        if len(tx.actions) != 1 or not isinstance(tx.actions[0], Transfer):
            raise PayoutInvalid("payout must be exactly one Transfer")
        if tx.actions[0].deposit != amount:
            raise PayoutInvalid("payout amount differs from the withdrawal")
        return 0  # gas is priced by the chain at execution; none is burnt without one

    @staticmethod
    def _outcome(result: dict[str, Any]) -> PayoutResult:
        status = result.get("status") or {}
        outcomes = [result.get("transaction_outcome") or {}, *(result.get("receipts_outcome") or [])]
        fee = 0
        for item in outcomes:
            burnt = (item.get("outcome") or {}).get("tokens_burnt")
            if burnt is not None:
                fee += parse_u128(burnt)
        if isinstance(status, dict) and "Failure" in status:
            return PayoutResult("failed", fee=fee, reason=str(status["Failure"])[:500])
        if isinstance(status, dict) and ("SuccessValue" in status or "SuccessReceiptId" in status):
            return PayoutResult("success", fee=fee)
        return PayoutResult("unknown", fee=fee, reason=f"not final: {status!r}"[:200])

    def submit(self, signed: SignedPayout) -> PayoutResult:
        if not _is_live():
            return PayoutResult("success", fee=0, raw={"mode": "sandbox"})
        from settlement.chains.near import NearRpcError

        rpc = self._rpc()
        try:
            result = rpc.call("send_tx", {"signed_tx_base64": signed.signed_transaction,
                                          "wait_until": "FINAL"})
        except ChainUnavailable as exc:
            return PayoutResult("unknown", reason=str(exc)[:200])
        except NearRpcError as exc:
            if exc.cause in ("INVALID_TRANSACTION",):
                info = str(exc.info)
                if "InvalidNonce" in info:  # maybe our own earlier submission landed
                    return self.status(signed)
                return PayoutResult("failed", fee=0, reason=f"{exc.cause}: {info}"[:500])
            return PayoutResult("unknown", reason=f"{exc.name}/{exc.cause}")
        finally:
            rpc.close()
        return self._outcome(result)

    def status(self, signed: SignedPayout) -> PayoutResult:
        if not _is_live():
            return PayoutResult("not_found", reason="sandbox has no chain")
        from settlement.chains.near import NearRpcError

        rpc = self._rpc()
        try:
            result = rpc.call("EXPERIMENTAL_tx_status",
                              {"tx_hash": signed.tx_hash, "sender_account_id": self.treasury_address,
                               "wait_until": "FINAL"})
        except ChainUnavailable as exc:
            return PayoutResult("unknown", reason=str(exc)[:200])
        except NearRpcError as exc:
            if exc.cause == "UNKNOWN_TRANSACTION":
                return PayoutResult("not_found")
            return PayoutResult("unknown", reason=f"{exc.name}/{exc.cause}")
        finally:
            rpc.close()
        return self._outcome(result)

    def provably_dead(self, signed: SignedPayout) -> bool:
        # Nonces only move forward: once the key's nonce reached ours and the chain does
        # not know our hash, another transaction consumed the nonce; ours can never land.
        if not _is_live():
            return False
        rpc = self._rpc()
        try:
            key = rpc.call("query", {"request_type": "view_access_key", "finality": "final",
                                     "account_id": self.treasury_address,
                                     "public_key": self.public_key})
        finally:
            rpc.close()
        return "error" not in key and int(key["nonce"]) >= int(signed.details.get("nonce", 0))

    def treasury_balance(self) -> int:
        rpc = self._rpc()
        try:
            account = rpc.call("query", {"request_type": "view_account", "finality": "final",
                                         "account_id": self.treasury_address})
        finally:
            rpc.close()
        return parse_u128(account["amount"])


def payout_chain(chain: str) -> PayoutChain:
    if chain == "stellar":
        return StellarPayouts()
    if chain == "near":
        return NearPayouts()
    raise ValueError(f"no payouts on {chain!r}")


def payout_details_from_signed(chain: str, signed_transaction: str) -> dict[str, Any]:
    """The judging details (sequence / nonce, validity window, fee bid) read back from the
    signed bytes, for payouts stored without them (refunds keep only the bytes)."""
    if chain == "stellar":
        from stellar_sdk import TransactionBuilder, TransactionEnvelope

        env = TransactionBuilder.from_xdr(signed_transaction, settings.STELLAR_NETWORK_PASSPHRASE)
        if not isinstance(env, TransactionEnvelope):
            return {}
        tx = env.transaction
        bounds = tx.preconditions.time_bounds if tx.preconditions else None
        return {"sequence": tx.sequence, "max_fee": tx.fee,
                "valid_until": bounds.max_time if bounds is not None else 0}
    from settlement.chains.near import decode_signed_transaction

    return {"nonce": decode_signed_transaction(signed_transaction).transaction.nonce}


@contextlib.contextmanager
def payout_lock(chain: str) -> Iterator[None]:
    """One payout at a time per treasury (a session-level PostgreSQL advisory lock): each
    consumes the treasury's next sequence number / nonce, so two signed at once would
    invalidate each other. Withdrawals and refunds both take it."""
    from django.db import connection

    key = int.from_bytes(hashlib.sha256(f"payout:{chain}".encode()).digest()[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [key])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
