"""Fake Horizon: a real HTTP server answering the Horizon endpoints the settlement code uses,
in Horizon's JSON shapes, for transactions built and signed with stellar-sdk.

Endpoints: `GET /transactions/{hash}` (outer or, for fee bumps, inner hash),
`GET /accounts/{id}/payments` (cursor/order/limit/include_failed/join=transactions) and
`GET /transactions/{hash}/payments`. Unknown resources get Horizon's problem+json 404.
Paging tokens follow Horizon's TOIDs: ledger << 32 | tx order << 12 | operation index.
`result_xdr` is a real TransactionResult (exact for payment operations).
"""

from __future__ import annotations

import base64
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from stellar_sdk import (
    Account,
    Asset,
    FeeBumpTransactionEnvelope,
    HashMemo,
    IdMemo,
    Keypair,
    Network,
    ReturnHashMemo,
    TextMemo,
    TransactionBuilder,
    TransactionEnvelope,
)
from stellar_sdk import xdr as sx
from stellar_sdk.operation import AccountMerge, CreateAccount, Payment

from settlement.chains.base import stroops_to_xlm
from tests.fakes._http import FakeHttpServer, Reply, Request

__all__ = ["FakeHorizon", "make_stellar_payment"]

_NOT_FOUND = {
    "type": "https://stellar.org/horizon-errors/not_found",
    "title": "Resource Missing",
    "status": 404,
    "detail": (
        "The resource at the url requested was not found.  This usually occurs for one of two"
        " reasons:  The url requested is not valid, or no data in our database could be found"
        " with the parameters provided."
    ),
}
_PROBLEM = "application/problem+json; charset=utf-8"


def _bad_request(invalid_field: str, reason: str = "") -> Reply:
    problem = {
        "type": "https://stellar.org/horizon-errors/bad_request",
        "title": "Bad Request",
        "status": 400,
        "detail": "The request you sent was invalid in some way.",
        "extras": {"invalid_field": invalid_field, "reason": reason},
    }
    return Reply.json(400, problem, _PROBLEM)


_HAL = "application/hal+json; charset=utf-8"
_HASH_RE = re.compile(r"[0-9a-f]{64}")


def make_stellar_payment(
    source_kp: Keypair,
    destination: str,
    amount_stroops: int,
    memo_id: int | None = None,
    memo_hash: bytes | str | None = None,
    network_passphrase: str = Network.TESTNET_NETWORK_PASSPHRASE,
    *,
    memo_text: str | None = None,
    asset: Asset | None = None,
    sequence: int = 1000,
    timeout: int | None = 300,
    op_source: Keypair | None = None,
    signers: list[Keypair] | None = None,
    fee_bump_source: Keypair | None = None,
) -> str:
    """Build and sign a one-operation payment envelope with stellar-sdk -> base64 XDR.

    `signers` defaults to [source_kp] (+ op_source). `fee_bump_source` wraps it in a fee bump
    signed by that key. `memo_hash` may be 32 bytes or 64 hex chars.
    """
    builder = TransactionBuilder(Account(source_kp.public_key, sequence), network_passphrase, 100)
    builder.append_payment_op(
        destination,
        asset or Asset.native(),
        stroops_to_xlm(amount_stroops),
        source=op_source.public_key if op_source else None,
    )
    if memo_id is not None:
        builder.add_id_memo(memo_id)
    elif memo_hash is not None:
        builder.add_hash_memo(bytes.fromhex(memo_hash) if isinstance(memo_hash, str) else memo_hash)
    elif memo_text is not None:
        builder.add_text_memo(memo_text)
    if timeout is None:
        builder.add_time_bounds(0, 0)  # explicitly unbounded
    else:
        builder.set_timeout(timeout)
    envelope = builder.build()
    for kp in signers if signers is not None else [source_kp, *([op_source] if op_source else [])]:
        envelope.sign(kp)
    if fee_bump_source is None:
        return envelope.to_xdr()
    bump = TransactionBuilder.build_fee_bump_transaction(fee_bump_source, 200, envelope, network_passphrase)
    bump.sign(fee_bump_source)
    return bump.to_xdr()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _memo_json(memo: Any) -> dict[str, str]:
    if isinstance(memo, IdMemo):
        return {"memo_type": "id", "memo": str(memo.memo_id)}
    if isinstance(memo, HashMemo):
        return {"memo_type": "hash", "memo": base64.b64encode(memo.memo_hash).decode()}
    if isinstance(memo, ReturnHashMemo):
        return {"memo_type": "return", "memo": base64.b64encode(memo.memo_return).decode()}
    if isinstance(memo, TextMemo):
        text = memo.memo_text
        return {
            "memo_type": "text",
            "memo": text.decode("utf-8", errors="replace"),
            "memo_bytes": base64.b64encode(text).decode(),
        }
    return {"memo_type": "none"}


def _op_results(ops: list[Any], successful: bool) -> list[sx.OperationResult]:
    results = []
    for op in ops:
        if isinstance(op, Payment):
            code = (
                sx.PaymentResultCode.PAYMENT_SUCCESS
                if successful
                else (sx.PaymentResultCode.PAYMENT_UNDERFUNDED)
            )
            tr = sx.OperationResultTr(sx.OperationType.PAYMENT, payment_result=sx.PaymentResult(code))
            results.append(sx.OperationResult(sx.OperationResultCode.opINNER, tr))
        else:
            results.append(sx.OperationResult(sx.OperationResultCode.opNOT_SUPPORTED))
    return results


class FakeHorizon(FakeHttpServer):
    def __init__(
        self,
        network_passphrase: str = Network.TESTNET_NETWORK_PASSPHRASE,
        *,
        start_ledger: int = 50_000,
        base_fee: int = 100,
    ) -> None:
        super().__init__()
        self.network_passphrase = network_passphrase
        self.base_fee = base_fee
        self._ledger = start_ledger
        self._state_lock = threading.Lock()
        self._transactions: dict[str, dict[str, Any]] = {}  # by outer and inner hash
        self._operations: list[dict[str, Any]] = []  # payment-like ops, in ledger order

    # -- state -----------------------------------------------------------------------
    def add_transaction(
        self,
        envelope_xdr: str,
        *,
        successful: bool = True,
        created_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Store a transaction as if it closed in the next ledger; returns its record."""
        env = TransactionBuilder.from_xdr(envelope_xdr, self.network_passphrase)
        with self._state_lock:
            self._ledger += 1
            ledger = self._ledger
            toid = (ledger << 32) | (1 << 12)
            moment = created_at or datetime.now(UTC).replace(microsecond=0)
            record = self._transaction_record(env, ledger, toid, moment, successful)
            self._transactions[record["hash"]] = record
            if "inner_transaction" in record:
                self._transactions[record["inner_transaction"]["hash"]] = record
            inner = (
                env.transaction.inner_transaction_envelope
                if isinstance(env, FeeBumpTransactionEnvelope)
                else env
            )
            for index, op in enumerate(inner.transaction.operations, start=1):
                op_record = self._operation_record(inner, op, toid + index, record)
                if op_record is not None:
                    self._operations.append(op_record)
            return record

    def record(self, tx_hash: str) -> dict[str, Any]:
        return self._transactions[tx_hash]

    def _transaction_record(
        self,
        env: TransactionEnvelope | FeeBumpTransactionEnvelope,
        ledger: int,
        toid: int,
        moment: datetime,
        successful: bool,
    ) -> dict[str, Any]:
        is_bump = isinstance(env, FeeBumpTransactionEnvelope)
        inner = env.transaction.inner_transaction_envelope if is_bump else env
        tx = inner.transaction
        n_ops = len(tx.operations)
        fee_charged = self.base_fee * (n_ops + 1 if is_bump else n_ops)
        op_results = _op_results(tx.operations, successful)
        inner_code = sx.TransactionResultCode.txSUCCESS if successful else (sx.TransactionResultCode.txFAILED)
        if is_bump:
            inner_result = sx.InnerTransactionResult(
                sx.Int64(fee_charged - self.base_fee),
                sx.InnerTransactionResultResult(inner_code, op_results),
                sx.InnerTransactionResultExt(0),
            )
            result = sx.TransactionResultResult(
                sx.TransactionResultCode.txFEE_BUMP_INNER_SUCCESS
                if successful
                else sx.TransactionResultCode.txFEE_BUMP_INNER_FAILED,
                inner_result_pair=sx.InnerTransactionResultPair(sx.Hash(inner.hash()), inner_result),
            )
        else:
            result = sx.TransactionResultResult(inner_code, results=op_results)
        result_xdr = sx.TransactionResult(sx.Int64(fee_charged), result, sx.TransactionResultExt(0)).to_xdr()

        tx_hash = env.hash_hex()
        record: dict[str, Any] = {
            "_links": {
                "self": {"href": f"{self.url}/transactions/{tx_hash}"},
                "account": {"href": f"{self.url}/accounts/{tx.source.account_id}"},
                "ledger": {"href": f"{self.url}/ledgers/{ledger}"},
                "operations": {
                    "href": f"{self.url}/transactions/{tx_hash}/operations{{?cursor,limit,order}}",
                    "templated": True,
                },
            },
            "id": tx_hash,
            "paging_token": str(toid),
            "successful": successful,
            "hash": tx_hash,
            "ledger": ledger,
            "created_at": _iso(moment),
            "source_account": tx.source.account_id,
            "source_account_sequence": str(tx.sequence),
            "fee_account": (env.transaction.fee_source.account_id if is_bump else tx.source.account_id),
            "fee_charged": str(fee_charged),
            "max_fee": str(env.transaction.fee if is_bump else tx.fee),
            "operation_count": n_ops,
            "envelope_xdr": env.to_xdr(),
            "result_xdr": result_xdr,
            "signatures": [base64.b64encode(s.signature).decode() for s in env.signatures],
            **_memo_json(tx.memo),
        }
        if tx.source.account_muxed_id is not None:
            record["account_muxed"] = tx.source.account_muxed
            record["account_muxed_id"] = str(tx.source.account_muxed_id)
        bounds = tx.preconditions.time_bounds if tx.preconditions else None
        if bounds is not None:
            record["valid_after"] = _iso(datetime.fromtimestamp(bounds.min_time, UTC))
            if bounds.max_time:
                record["valid_before"] = _iso(datetime.fromtimestamp(bounds.max_time, UTC))
            record["preconditions"] = {
                "timebounds": {"min_time": str(bounds.min_time), "max_time": str(bounds.max_time)}
            }
        if is_bump:
            record["fee_bump_transaction"] = {
                "hash": tx_hash,
                "signatures": record["signatures"],
            }
            record["inner_transaction"] = {
                "hash": inner.hash_hex(),
                "signatures": [base64.b64encode(s.signature).decode() for s in inner.signatures],
                "max_fee": str(tx.fee),
            }
        return record

    def _operation_record(
        self, inner: TransactionEnvelope, op: Any, toid: int, tx_record: dict[str, Any]
    ) -> dict[str, Any] | None:
        source = (op.source or inner.transaction.source).account_id
        base = {
            "id": str(toid),
            "paging_token": str(toid),
            "transaction_successful": tx_record["successful"],
            "source_account": source,
            "created_at": tx_record["created_at"],
            "transaction_hash": tx_record["hash"],
            "_links": {"self": {"href": f"{self.url}/operations/{toid}"}},
        }
        if isinstance(op, Payment):
            asset = (
                {"asset_type": "native"}
                if op.asset.is_native()
                else {
                    "asset_type": op.asset.type,
                    "asset_code": op.asset.code,
                    "asset_issuer": op.asset.issuer,
                }
            )
            return {
                **base,
                "type": "payment",
                "type_i": 1,
                **asset,
                "from": source,
                "to": op.destination.account_id,
                "amount": op.amount,
                "_parties": {source, op.destination.account_id},
            }
        if isinstance(op, CreateAccount):
            return {
                **base,
                "type": "create_account",
                "type_i": 0,
                "starting_balance": op.starting_balance,
                "funder": source,
                "account": op.destination,
                "_parties": {source, op.destination},
            }
        if isinstance(op, AccountMerge):
            return {
                **base,
                "type": "account_merge",
                "type_i": 8,
                "account": source,
                "into": op.destination.account_id,
                "_parties": {source, op.destination.account_id},
            }
        return None

    # -- HTTP ------------------------------------------------------------------------
    def handle(self, request: Request) -> Reply:
        if request.method != "GET":
            return Reply.json(405, {**_NOT_FOUND, "status": 405, "title": "Method Not Allowed"}, _PROBLEM)
        parts = [p for p in request.path.split("/") if p]
        if len(parts) == 2 and parts[0] == "transactions":
            return self._get_transaction(parts[1])
        if len(parts) == 3 and parts[0] == "accounts" and parts[2] == "payments":
            return self._list_payments(request, lambda op: parts[1] in op["_parties"])
        if len(parts) == 3 and parts[0] == "transactions" and parts[2] == "payments":
            record = self._transactions.get(parts[1])
            if record is None:
                return Reply.json(404, _NOT_FOUND, _PROBLEM)
            return self._list_payments(
                request, lambda op: op["transaction_hash"] == record["hash"], include_all=True
            )
        return Reply.json(404, _NOT_FOUND, _PROBLEM)

    def _get_transaction(self, tx_hash: str) -> Reply:
        if not _HASH_RE.fullmatch(tx_hash):
            return _bad_request("tx_id", "Transaction hash must be a hex-encoded, lowercase SHA-256 hash")
        record = self._transactions.get(tx_hash)
        if record is None:
            return Reply.json(404, _NOT_FOUND, _PROBLEM)
        return Reply.json(200, record, _HAL)

    def _list_payments(self, request: Request, match: Any, include_all: bool = False) -> Reply:
        q = {k: v[-1] for k, v in request.query.items()}
        order = q.get("order", "asc")
        try:
            limit = int(q.get("limit", "10"))
        except ValueError:
            limit = -1
        if order not in ("asc", "desc"):
            return _bad_request("order", "The order must be asc or desc")
        if not 1 <= limit <= 200:
            return _bad_request("limit", "The limit must be between 1 and 200")
        include_failed = include_all or q.get("include_failed") == "true"
        with self._state_lock:
            ops = [
                op
                for op in self._operations
                if match(op) and (include_failed or op["transaction_successful"])
            ]
        cursor = q.get("cursor", "")
        if cursor == "now":
            cursor_value = (self._ledger + 1) << 32
        else:
            try:
                cursor_value = int(cursor) if cursor else None
            except ValueError:
                return _bad_request("cursor", "The cursor must be a paging token or 'now'")
        if order == "desc":
            ops = list(reversed(ops))
        if cursor_value is not None:
            if order == "asc":
                ops = [op for op in ops if int(op["paging_token"]) > cursor_value]
            else:
                ops = [op for op in ops if int(op["paging_token"]) < cursor_value]
        page = ops[:limit]
        records = []
        for op in page:
            record = {k: v for k, v in op.items() if k != "_parties"}
            if q.get("join") == "transactions":
                record["transaction"] = self._transactions[op["transaction_hash"]]
            records.append(record)
        last = page[-1]["paging_token"] if page else cursor
        first = page[0]["paging_token"] if page else cursor
        base = f"{self.url}{request.path}"
        other = "desc" if order == "asc" else "asc"
        body = {
            "_links": {
                "self": {"href": f"{base}?cursor={cursor}&limit={limit}&order={order}"},
                "next": {"href": f"{base}?cursor={last}&limit={limit}&order={order}"},
                "prev": {"href": f"{base}?cursor={first}&limit={limit}&order={other}"},
            },
            "_embedded": {"records": records},
        }
        return Reply.json(200, body, _HAL)


def ledger_close_time(offset_seconds: int = 0) -> datetime:
    """A whole-second UTC time, as Horizon reports `created_at`."""
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=offset_seconds)
