"""Stateful chain fakes for the books tests: Horizon and NEAR JSON-RPC that keep balances.

They extend the shared fakes (tests/fakes) with what reconciliation and payouts need, in the
real wire shapes: Horizon `GET /accounts/{id}` (sequence, native balance) and
`POST /transactions` (submit: signature, sequence, time bounds and balance checked, fee
charged, payment applied; a failed payment is included and charged, like Stellar's
tx_failed); NEAR `query view_account`, `view_access_key` with a moving nonce, and `send_tx`
(signature and nonce checked, deposit and gas applied). A test "submits to the network" a
user's payment with `land(...)`; the service submits its payouts over HTTP. So after any
sequence of operations, the fake's balances are what a real chain would show, and
reconciliation can compare the books with them.
"""

from __future__ import annotations

import base64
import threading
import time
from typing import Any
from urllib.parse import parse_qs

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from stellar_sdk import Keypair, TransactionBuilder, TransactionEnvelope
from stellar_sdk import exceptions as sdk_exceptions
from stellar_sdk import xdr as sx
from stellar_sdk.operation import Payment

from settlement.chains.base import stroops_to_xlm
from settlement.chains.near import FunctionCall, Transfer, decode_signed_transaction
from tests.fakes._http import Reply, Request
from tests.fakes.horizon import FakeHorizon
from tests.fakes.near_rpc import FakeNearRpc

# What the shared NEAR fake reports as burnt per outcome; a transaction shows three outcomes.
NEAR_TX_FEE = 3 * 242_800_000_000_000_000_000


class LedgerHorizon(FakeHorizon):
    def __init__(self, network_passphrase: str, **kwargs: Any) -> None:
        super().__init__(network_passphrase, **kwargs)
        self.balances: dict[str, int] = {}
        self.sequences: dict[str, int] = {}
        self.ledger_lock = threading.Lock()
        # "apply_then_timeout": apply the next submission, answer 504 (outcome unknown).
        self.next_submit_fault: str | None = None

    def fund(self, account: str, stroops: int, sequence: int = 100 << 32) -> None:
        with self.ledger_lock:
            self.balances[account] = self.balances.get(account, 0) + stroops
            self.sequences.setdefault(account, sequence)

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    # -- applying transactions ------------------------------------------------------------

    def land(self, envelope_xdr: str) -> dict[str, Any]:
        """A user submits their signed payment to the network: apply it (raises on refusal)."""
        ok, reply = self._apply(envelope_xdr)
        if not ok:
            raise AssertionError(f"payment refused by the fake ledger: {reply}")
        return reply

    def _apply(self, envelope_xdr: str) -> tuple[bool, dict[str, Any]]:
        env = TransactionBuilder.from_xdr(envelope_xdr, self.network_passphrase)
        assert isinstance(env, TransactionEnvelope), "fee bumps are not used by these tests"
        tx = env.transaction
        source = tx.source.account_id
        with self.ledger_lock:
            if not _stellar_signed(env, source):
                return False, _codes("tx_bad_auth")
            bounds = tx.preconditions.time_bounds if tx.preconditions else None
            if bounds is not None and bounds.max_time and time.time() > bounds.max_time:
                return False, _codes("tx_too_late")
            if source not in self.sequences:
                return False, _codes("tx_no_source_account")
            if tx.sequence != self.sequences[source] + 1:
                return False, _codes("tx_bad_seq")
            fee = self.base_fee * len(tx.operations)
            if self.balances.get(source, 0) < fee:
                return False, _codes("tx_insufficient_balance")
            # Included: the sequence is consumed and the fee charged, success or not.
            self.sequences[source] = tx.sequence
            self.balances[source] -= fee
            ops_ok = True
            failure = ""
            for op in tx.operations:
                assert isinstance(op, Payment)
                amount = int(op.to_xdr_object().body.payment_op.amount.int64)
                destination = op.destination.account_id
                if destination not in self.balances:
                    ops_ok, failure = False, "op_no_destination"
                elif self.balances[source] < amount:
                    ops_ok, failure = False, "op_underfunded"
            if ops_ok:
                for op in tx.operations:
                    amount = int(op.to_xdr_object().body.payment_op.amount.int64)
                    self.balances[source] -= amount
                    self.balances[op.destination.account_id] += amount
        record = self.add_transaction(envelope_xdr, successful=ops_ok)
        if not ops_ok:
            return False, {**_codes("tx_failed", [failure]), "result_xdr": record["result_xdr"],
                           "envelope_xdr": envelope_xdr, "hash": record["hash"]}
        return True, record

    # -- HTTP -----------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET" and len(parts) == 2 and parts[0] == "accounts":
            return self._account(parts[1])
        if request.method == "POST" and parts == ["transactions"]:
            form = parse_qs(request.body.decode())
            ok, reply = self._apply(form["tx"][0])
            fault, self.next_submit_fault = self.next_submit_fault, None
            if fault == "apply_then_timeout":
                return Reply.json(504, {"type": "https://stellar.org/horizon-errors/timeout",
                                        "title": "Timeout", "status": 504})
            if ok:
                return Reply.json(200, reply)
            return Reply.json(400, {"type": "https://stellar.org/horizon-errors/transaction_failed",
                                    "title": "Transaction Failed", "status": 400,
                                    "extras": reply})
        return super().handle(request)

    def _account(self, account_id: str) -> Reply:
        if account_id not in self.sequences:
            return super().handle(Request("GET", "/missing", {}, {}, b""))
        balance = self.balances.get(account_id, 0)
        return Reply.json(200, {
            "id": account_id, "account_id": account_id,
            "sequence": str(self.sequences[account_id]), "subentry_count": 0,
            "thresholds": {"low_threshold": 0, "med_threshold": 0, "high_threshold": 0},
            "flags": {"auth_required": False, "auth_revocable": False, "auth_immutable": False,
                      "auth_clawback_enabled": False},
            "balances": [{"balance": stroops_to_xlm(balance), "buying_liabilities": "0.0000000",
                          "selling_liabilities": "0.0000000", "asset_type": "native"}],
            "signers": [{"weight": 1, "key": account_id, "type": "ed25519_public_key"}],
            "data": {},
        })


def _codes(transaction: str, operations: list[str] | None = None) -> dict[str, Any]:
    codes: dict[str, Any] = {"transaction": transaction}
    if operations:
        codes["operations"] = operations
    return {"result_codes": codes}


def _stellar_signed(env: TransactionEnvelope, account_id: str) -> bool:
    key = Keypair.from_public_key(account_id)
    for decorated in env.signatures:
        try:
            key.verify(env.hash(), decorated.signature)
            return True
        except sdk_exceptions.BadSignatureError:
            continue
    return False


def stellar_fee_charged(result_xdr: str) -> int:
    return int(sx.TransactionResult.from_xdr(result_xdr).fee_charged.int64)


class LedgerNearRpc(FakeNearRpc):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.balances: dict[str, int] = {}
        self.nonces: dict[tuple[str, str], int] = {}
        self.ledger_lock = threading.Lock()

    def fund(self, account: str, yocto: int) -> None:
        with self.ledger_lock:
            self.balances[account] = self.balances.get(account, 0) + yocto

    def add_key(self, account: str, public_key: str, nonce: int = 85) -> None:
        self.add_access_key(account, public_key)
        with self.ledger_lock:
            self.nonces[(account, public_key)] = nonce

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    def land(self, signed_b64: str) -> str:
        ok, outcome = self._apply(signed_b64)
        if not ok:
            raise AssertionError(f"transaction refused by the fake chain: {outcome}")
        return str(outcome)

    def _apply(self, signed_b64: str) -> tuple[bool, Any]:
        signed = decode_signed_transaction(signed_b64)
        tx = signed.transaction
        try:
            VerifyKey(tx.public_key.data).verify(tx.hash, signed.signature)
        except BadSignatureError:
            return False, "InvalidSignature"
        deposit = sum(a.deposit for a in tx.actions if isinstance(a, Transfer | FunctionCall))
        with self.ledger_lock:
            key = (tx.signer_id, str(tx.public_key))
            if key in self.nonces:
                if tx.nonce <= self.nonces[key]:
                    return False, {"InvalidNonce": {"tx_nonce": tx.nonce, "ak_nonce": self.nonces[key]}}
                self.nonces[key] = tx.nonce
            if self.balances.get(tx.signer_id, 0) < deposit + NEAR_TX_FEE:
                return False, {"NotEnoughBalance": {"signer_id": tx.signer_id}}
            self.balances[tx.signer_id] -= NEAR_TX_FEE
            succeeded = tx.receiver_id in self.balances
            if succeeded:
                self.balances[tx.signer_id] -= deposit
                self.balances[tx.receiver_id] += deposit
        tx_hash = self.add_transaction(signed_b64, status="success" if succeeded else "failure",
                                       failure_message="account does not exist")
        return True, tx_hash

    def handle(self, request: Request) -> Reply:
        if request.method == "POST":
            payload = request.json()
            if isinstance(payload, dict) and payload.get("method") == "send_tx":
                return self._send_tx(payload.get("id"), payload.get("params") or {})
            if isinstance(payload, dict) and payload.get("method") == "query":
                reply = self._ledger_query(payload.get("id"), payload.get("params") or {})
                if reply is not None:
                    return reply
        return super().handle(request)

    def _send_tx(self, request_id: Any, params: dict[str, Any]) -> Reply:
        signed_b64 = params["signed_tx_base64"]
        ok, outcome = self._apply(signed_b64)
        if not ok:
            return self._error(request_id, 200, "HANDLER_ERROR", "INVALID_TRANSACTION",
                               {"TxExecutionError": {"InvalidTxError": outcome}}, str(outcome))
        tx_hash = decode_signed_transaction(signed_b64).transaction.hash_b58
        stored = self._txs[tx_hash]
        return self._result(request_id, self._outcome_view(tx_hash, stored, "FINAL", False))

    def _ledger_query(self, request_id: Any, params: dict[str, Any]) -> Reply | None:
        request_type = params.get("request_type")
        account = params.get("account_id", "")
        block = {"block_height": self._height, "block_hash": "11111111111111111111111111111111"}
        if request_type == "view_account":
            if account not in self.balances:
                return self._error(request_id, 200, "HANDLER_ERROR", "UNKNOWN_ACCOUNT",
                                   {"requested_account_id": account, **block},
                                   f"account {account} does not exist while viewing")
            return self._result(request_id, {"amount": str(self.balances[account]), "locked": "0",
                                             "code_hash": "11111111111111111111111111111111",
                                             "storage_usage": 182, "storage_paid_at": 0, **block})
        if request_type == "view_access_key":
            key = (account, params.get("public_key", ""))
            if key in self.nonces:
                return self._result(request_id, {"nonce": self.nonces[key],
                                                 "permission": "FullAccess", **block})
        return None


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
