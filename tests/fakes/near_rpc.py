"""Fake NEAR JSON-RPC node on a real socket, answering in nearcore's response shapes.

Methods: `EXPERIMENTAL_tx_status` and `tx` ({tx_hash, sender_account_id, wait_until} or the
legacy [hash, sender] list), `query` (view_access_key, view_access_key_list) and `block`.
Transactions come from real signed transactions (py-near `sign_and_serialize_transaction`).

Like nearcore: errors are `{"error": {"name", "cause": {"name", "info"}, "code", "message",
"data"}}`; UNKNOWN_TRANSACTION is HTTP 200, TIMEOUT_ERROR HTTP 408. A transaction that is
not final yet, asked for with wait_until FINAL, times out (TIMEOUT_ERROR); asked for with a
lower wait_until it is returned with its current `final_execution_status`. A missing access
key is reported the legacy way, inside `result.error` (as nearcore still does for query).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import base58
from nacl.signing import SigningKey
from py_near.transactions import sign_and_serialize_transaction
from py_near_primitives import FunctionCallAction, TransferAction

from settlement.chains.near import (
    AddKey,
    CreateAccount,
    DeleteAccount,
    DeleteKey,
    DeployContract,
    FunctionCall,
    NearAction,
    NearSignedTransaction,
    Stake,
    Transfer,
    decode_signed_transaction,
)
from tests.fakes._http import FakeHttpServer, Reply, Request

__all__ = ["FakeNearRpc", "TxStatus", "make_near_payment", "near_keypair"]

TxStatus = Literal["success", "failure", "not_final"]
TGAS = 10**12
_ORDER = ["NONE", "INCLUDED", "EXECUTED_OPTIMISTIC", "INCLUDED_FINAL", "EXECUTED", "FINAL"]


def near_keypair(seed: bytes | None = None) -> tuple[SigningKey, str, str]:
    """A fresh ed25519 key -> (signing key, 'ed25519:<b58 public>', implicit account id)."""
    key = SigningKey(seed) if seed is not None else SigningKey.generate()
    public = bytes(key.verify_key)
    return key, "ed25519:" + base58.b58encode(public).decode(), public.hex()


def make_near_payment(
    signer_account_id: str,
    signing_key: SigningKey | bytes,
    receiver: str,
    quote_id: str | None = None,
    memo: str | None = None,
    deposit_yocto: int = 10**24,
    nonce: int = 1,
    block_hash: bytes = b"\x11" * 32,
    *,
    method_name: str | None = None,
    args: bytes | None = None,
    actions: list[Any] | None = None,
    gas: int = 30 * TGAS,
) -> str:
    """A base64 borsh SignedTransaction signed by py-near.

    quote_id -> FunctionCall execute_payment({"quote_id"}); memo -> FunctionCall
    deposit({"memo"}); neither -> Transfer. `actions` (py_near_primitives actions) overrides.
    """
    if actions is None:
        if quote_id is not None or method_name is not None:
            body = args if args is not None else json.dumps({"quote_id": quote_id}).encode()
            actions = [FunctionCallAction(method_name or "execute_payment", body, gas, deposit_yocto)]
        elif memo is not None:
            body = args if args is not None else json.dumps({"memo": memo}).encode()
            actions = [FunctionCallAction("deposit", body, gas, deposit_yocto)]
        else:
            actions = [TransferAction(deposit_yocto)]
    key = signing_key if isinstance(signing_key, SigningKey) else SigningKey(bytes(signing_key)[:32])
    secret = bytes(key) + bytes(key.verify_key)
    return sign_and_serialize_transaction(signer_account_id, secret, receiver, nonce, actions, block_hash)


def _b58(raw: bytes) -> str:
    return base58.b58encode(raw).decode()


def _derived_hash(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
    return _b58(h.digest())


def _action_view(action: NearAction) -> Any:
    if isinstance(action, CreateAccount):
        return "CreateAccount"
    if isinstance(action, DeployContract):
        return {"DeployContract": {"code": base64.b64encode(hashlib.sha256(action.code).digest()).decode()}}
    if isinstance(action, FunctionCall):
        return {
            "FunctionCall": {
                "method_name": action.method_name,
                "args": base64.b64encode(action.args).decode(),
                "gas": action.gas,
                "deposit": str(action.deposit),
            }
        }
    if isinstance(action, Transfer):
        return {"Transfer": {"deposit": str(action.deposit)}}
    if isinstance(action, Stake):
        return {"Stake": {"stake": str(action.stake), "public_key": str(action.public_key)}}
    if isinstance(action, AddKey):
        permission: Any = "FullAccess"
        if not action.full_access:
            permission = {
                "FunctionCall": {
                    "allowance": None if action.allowance is None else str(action.allowance),
                    "receiver_id": action.receiver_id,
                    "method_names": list(action.method_names),
                }
            }
        return {
            "AddKey": {
                "public_key": str(action.public_key),
                "access_key": {"nonce": action.nonce, "permission": permission},
            }
        }
    if isinstance(action, DeleteKey):
        return {"DeleteKey": {"public_key": str(action.public_key)}}
    if isinstance(action, DeleteAccount):
        return {"DeleteAccount": {"beneficiary_id": action.beneficiary_id}}
    return {type(action).__name__: {}}


@dataclass
class _StoredTx:
    signed: NearSignedTransaction
    status: TxStatus
    block_hash: str
    block_height: int
    timestamp_ns: int
    failure_message: str


class FakeNearRpc(FakeHttpServer):
    def __init__(self, *, start_height: int = 180_000_000) -> None:
        super().__init__()
        self._state_lock = threading.Lock()
        self._height = start_height
        self._txs: dict[str, _StoredTx] = {}
        self._blocks: dict[str, tuple[int, int]] = {}  # hash -> (height, timestamp ns)
        self._keys: dict[str, dict[str, Any]] = {}  # account -> public key -> permission
        self.wait_timeout_delay = 0.0  # how long a FINAL wait "blocks" before TIMEOUT_ERROR

    # -- state -----------------------------------------------------------------------
    def add_transaction(
        self,
        signed_transaction_base64: str,
        *,
        status: TxStatus = "success",
        failure_message: str = "Smart contract panicked: quote expired",
    ) -> str:
        """Store a transaction as executed in a new block; returns its hash (base58)."""
        signed = decode_signed_transaction(signed_transaction_base64)
        with self._state_lock:
            self._height += 1
            block_hash = _derived_hash("block", str(self._height))
            timestamp_ns = time.time_ns()
            self._blocks[block_hash] = (self._height, timestamp_ns)
            tx_hash = signed.transaction.hash_b58
            self._txs[tx_hash] = _StoredTx(
                signed, status, block_hash, self._height, timestamp_ns, failure_message
            )
            return tx_hash

    def set_status(self, tx_hash: str, status: TxStatus) -> None:
        with self._state_lock:
            self._txs[tx_hash].status = status

    def add_access_key(self, account_id: str, public_key: str, *, full_access: bool = True) -> None:
        permission: Any = "FullAccess"
        if not full_access:
            permission = {
                "FunctionCall": {
                    "allowance": "250000000000000000000000",
                    "receiver_id": account_id,
                    "method_names": [],
                }
            }
        with self._state_lock:
            self._keys.setdefault(account_id, {})[public_key] = permission

    # -- JSON-RPC ----------------------------------------------------------------------
    def handle(self, request: Request) -> Reply:
        if request.method != "POST":
            return Reply(405, b"Method Not Allowed")
        try:
            payload = request.json()
            method = payload["method"]
            params = payload.get("params")
            request_id = payload.get("id")
        except (ValueError, KeyError, TypeError):
            return self._error(
                None, 400, "REQUEST_VALIDATION_ERROR", "PARSE_ERROR", {"error_message": "bad JSON"}
            )
        if method in ("EXPERIMENTAL_tx_status", "tx"):
            return self._tx_status(request_id, params, with_receipts=method != "tx")
        if method == "query":
            return self._query(request_id, params)
        if method == "block":
            return self._block(request_id, params)
        return self._error(
            request_id, 200, "REQUEST_VALIDATION_ERROR", "METHOD_NOT_FOUND", {"method_name": method}
        )

    def _result(self, request_id: Any, result: Any) -> Reply:
        return Reply.json(200, {"jsonrpc": "2.0", "result": result, "id": request_id})

    def _error(
        self, request_id: Any, http_status: int, name: str, cause: str, info: Any, data: str = ""
    ) -> Reply:
        body = {
            "jsonrpc": "2.0",
            "error": {
                "name": name,
                "cause": {"name": cause, "info": info},
                "code": -32000,
                "message": "Server error",
                "data": data or cause,
            },
            "id": request_id,
        }
        return Reply.json(http_status, body)

    def _tx_status(self, request_id: Any, params: Any, *, with_receipts: bool) -> Reply:
        if isinstance(params, list) and len(params) == 2:
            params = {"tx_hash": params[0], "sender_account_id": params[1]}
        if not isinstance(params, dict):
            return self._error(
                request_id, 400, "REQUEST_VALIDATION_ERROR", "PARSE_ERROR", {"error_message": "params"}
            )
        wait_until = params.get("wait_until", "EXECUTED_OPTIMISTIC")
        if "signed_tx_base64" in params:
            tx_hash = decode_signed_transaction(params["signed_tx_base64"]).transaction.hash_b58
        else:
            tx_hash = params.get("tx_hash", "")
        try:
            if len(base58.b58decode(tx_hash)) != 32:
                raise ValueError
        except ValueError:
            return self._error(
                request_id,
                400,
                "REQUEST_VALIDATION_ERROR",
                "PARSE_ERROR",
                {"error_message": f"invalid tx hash {tx_hash!r}"},
            )
        stored = self._txs.get(tx_hash)
        if stored is None or (
            "sender_account_id" in params
            and params["sender_account_id"] != stored.signed.transaction.signer_id
        ):
            return self._error(
                request_id,
                200,
                "HANDLER_ERROR",
                "UNKNOWN_TRANSACTION",
                {"requested_transaction_hash": tx_hash},
                f"Transaction {tx_hash} doesn't exist",
            )
        current = "FINAL" if stored.status != "not_final" else "EXECUTED_OPTIMISTIC"
        if wait_until in _ORDER and _ORDER.index(wait_until) > _ORDER.index(current):
            time.sleep(self.wait_timeout_delay)
            return self._error(request_id, 408, "HANDLER_ERROR", "TIMEOUT_ERROR", {}, "Timeout")
        return self._result(request_id, self._outcome_view(tx_hash, stored, current, with_receipts))

    def _outcome_view(
        self, tx_hash: str, stored: _StoredTx, current: str, with_receipts: bool
    ) -> dict[str, Any]:
        tx = stored.signed.transaction
        receipt_id = _derived_hash("receipt", tx_hash)
        refund_id = _derived_hash("refund", tx_hash)
        receipt_block = _derived_hash("block", str(stored.block_height + 1))
        failed = stored.status == "failure"
        deposit = sum(getattr(a, "deposit", 0) for a in tx.actions)
        if failed:
            failure = {
                "ActionError": {
                    "index": 0,
                    "kind": {"FunctionCallError": {"ExecutionError": stored.failure_message}},
                }
            }
            receipt_status: dict[str, Any] = {"Failure": failure}
            top_status: dict[str, Any] = {"Failure": failure}
        else:
            receipt_status = {"SuccessValue": ""}
            top_status = {"SuccessValue": ""}

        def outcome(oid: str, block: str, executor: str, status: Any, receipts: list[str]) -> Any:
            return {
                "proof": [],
                "block_hash": block,
                "id": oid,
                "outcome": {
                    "logs": [],
                    "receipt_ids": receipts,
                    "gas_burnt": 2_428_000_000_000,
                    "tokens_burnt": "242800000000000000000",
                    "executor_id": executor,
                    "status": status,
                    "metadata": {"version": 1, "gas_profile": None},
                },
            }

        view: dict[str, Any] = {
            "final_execution_status": current,
            "status": top_status,
            "transaction": {
                "signer_id": tx.signer_id,
                "public_key": str(tx.public_key),
                "nonce": tx.nonce,
                "receiver_id": tx.receiver_id,
                "actions": [_action_view(a) for a in tx.actions],
                "priority_fee": 0,
                "signature": "ed25519:" + _b58(stored.signed.signature),
                "hash": tx_hash,
            },
            "transaction_outcome": outcome(
                tx_hash,
                stored.block_hash,
                tx.signer_id,
                {"SuccessReceiptId": receipt_id},
                [receipt_id],
            ),
            "receipts_outcome": [
                outcome(receipt_id, receipt_block, tx.receiver_id, receipt_status, [refund_id]),
                outcome(refund_id, receipt_block, tx.signer_id, {"SuccessValue": ""}, []),
            ],
        }
        if with_receipts:
            view["receipts"] = [
                {
                    "predecessor_id": tx.signer_id,
                    "receiver_id": tx.receiver_id,
                    "receipt_id": receipt_id,
                    "receipt": {
                        "Action": {
                            "signer_id": tx.signer_id,
                            "signer_public_key": str(tx.public_key),
                            "gas_price": "100000000",
                            "output_data_receivers": [],
                            "input_data_ids": [],
                            "actions": [_action_view(a) for a in tx.actions],
                            "is_promise_yield": False,
                        }
                    },
                    "priority": 0,
                }
            ]
        if failed:
            # A failed call refunds the attached deposit to the signer.
            view["receipts_outcome"][1]["outcome"]["logs"] = [f"refund {deposit}"]
        return view

    def _query(self, request_id: Any, params: Any) -> Reply:
        if not isinstance(params, dict):
            return self._error(
                request_id, 400, "REQUEST_VALIDATION_ERROR", "PARSE_ERROR", {"error_message": "params"}
            )
        block_hash = _derived_hash("block", str(self._height))
        request_type = params.get("request_type")
        account_id = params.get("account_id", "")
        keys = self._keys.get(account_id)
        if keys is None:
            return self._error(
                request_id,
                200,
                "HANDLER_ERROR",
                "UNKNOWN_ACCOUNT",
                {"requested_account_id": account_id, "block_height": self._height, "block_hash": block_hash},
                f"account {account_id} does not exist while viewing",
            )
        if request_type == "view_access_key":
            public_key = params.get("public_key", "")
            if public_key not in keys:
                return self._result(
                    request_id,
                    {
                        "error": f"access key {public_key} does not exist while viewing",
                        "logs": [],
                        "block_height": self._height,
                        "block_hash": block_hash,
                    },
                )
            return self._result(
                request_id,
                {
                    "nonce": 85,
                    "permission": keys[public_key],
                    "block_height": self._height,
                    "block_hash": block_hash,
                },
            )
        if request_type == "view_access_key_list":
            return self._result(
                request_id,
                {
                    "keys": [
                        {"public_key": pk, "access_key": {"nonce": 85, "permission": perm}}
                        for pk, perm in keys.items()
                    ],
                    "block_height": self._height,
                    "block_hash": block_hash,
                },
            )
        return self._error(
            request_id, 400, "REQUEST_VALIDATION_ERROR", "PARSE_ERROR", {"error_message": "request_type"}
        )

    def _block(self, request_id: Any, params: Any) -> Reply:
        block_id = params.get("block_id") if isinstance(params, dict) else None
        if block_id is None:
            block_hash = _derived_hash("block", str(self._height))
            height, ts = self._height, time.time_ns()
        elif block_id in self._blocks:
            block_hash = block_id
            height, ts = self._blocks[block_id]
        else:
            return self._error(
                request_id,
                200,
                "HANDLER_ERROR",
                "UNKNOWN_BLOCK",
                {},
                "DB Not Found Error: BLOCK HEIGHT",
            )
        return self._result(
            request_id,
            {
                "author": "node0",
                "header": {
                    "height": height,
                    "hash": block_hash,
                    "prev_hash": _derived_hash("block", str(height - 1)),
                    "timestamp": ts,
                    "timestamp_nanosec": str(ts),
                },
                "chunks": [],
            },
        )
