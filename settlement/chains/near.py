"""NEAR payment verification: borsh decoding of signed transactions, the sandbox signature
check and the live check through NEAR JSON-RPC.

Wire facts this module relies on (checked against py-near 1.2.22 / py_near_primitives 0.2.12):

* `SignedTransaction` = borsh(Transaction) ++ Signature, where Signature is 1 key-type byte
  (0 = ed25519) + 64 bytes. The transaction hash is base58(sha256(borsh(Transaction))) and
  is what the ed25519 signature signs (the signature is over the 32-byte hash).
* Transaction (V0, what py-near and wallets produce; no version prefix):
  signer_id: string, public_key: u8 key type + 32 bytes, nonce: u64, receiver_id: string,
  block_hash: [u8; 32], actions: Vec<Action>. Strings are u32 LE length + UTF-8 bytes.
  nearcore tells a V1 transaction apart by its first byte being 1 and the second non-zero
  (a V0 account-id length is <= 64, so its second byte is always 0); we refuse V1.
* Action is an enum with a u8 tag: 0 CreateAccount, 1 DeployContract{code}, 2 FunctionCall
  {method_name, args: Vec<u8>, gas: u64, deposit: u128}, 3 Transfer{deposit: u128},
  4 Stake{stake: u128, public_key}, 5 AddKey{public_key, access_key}, 6 DeleteKey{public_key},
  7 DeleteAccount{beneficiary_id}, 8 Delegate(SignedDelegateAction), 9 DeployGlobalContract,
  10 UseGlobalContract. Integers are little-endian.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import base58
import httpx2
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from settlement.chains.base import ChainUnavailable, PaymentInvalid, VerifiedPayment, parse_u128

__all__ = [
    "AddKey",
    "CreateAccount",
    "Delegate",
    "DeleteAccount",
    "DeleteKey",
    "DeployContract",
    "DeployGlobalContract",
    "FunctionCall",
    "NearAction",
    "NearJsonRpc",
    "NearPublicKey",
    "NearRpcError",
    "NearRpcVerifier",
    "NearSandboxVerifier",
    "NearSignedTransaction",
    "NearTransaction",
    "Stake",
    "Transfer",
    "UseGlobalContract",
    "BorshError",
    "decode_signed_transaction",
    "is_implicit_account",
    "is_valid_account_id",
    "parse_ed25519_public_key",
]

ED25519 = 0
SECP256K1 = 1
_KEY_LEN = {ED25519: 32, SECP256K1: 64}
_SIG_LEN = {ED25519: 64, SECP256K1: 65}

# Methods of the payment contract that accept money, and the JSON argument each must carry.
PAYMENT_METHODS = {"execute_payment": "quote_id", "deposit": "memo"}
MAX_SIGNED_TX_BYTES = 64 * 1024  # far above any payment; bounds work on hostile input

# ---------------------------------------------------------------------------------------
# Account ids and keys
# ---------------------------------------------------------------------------------------

_ACCOUNT_ID_RE = re.compile(r"(([a-z0-9]+[-_])*[a-z0-9]+\.)*([a-z0-9]+[-_])*[a-z0-9]+")
_IMPLICIT_RE = re.compile(r"[0-9a-f]{64}")
_ETH_IMPLICIT_RE = re.compile(r"0x[0-9a-f]{40}")


def is_valid_account_id(account_id: str) -> bool:
    """NEAR account-id syntax: 2-64 chars, lowercase `[a-z0-9]` runs joined by single `-`/`_`,
    segments separated by `.`."""
    return (
        isinstance(account_id, str)
        and 2 <= len(account_id) <= 64
        and _ACCOUNT_ID_RE.fullmatch(account_id) is not None
    )


def is_implicit_account(account_id: str) -> bool:
    """A NEAR-implicit account: the lowercase hex of its ed25519 public key."""
    return _IMPLICIT_RE.fullmatch(account_id) is not None


def is_eth_implicit_account(account_id: str) -> bool:
    return _ETH_IMPLICIT_RE.fullmatch(account_id) is not None


def parse_ed25519_public_key(value: str) -> bytes:
    """'ed25519:<base58>' -> 32 raw bytes. Raises ValueError for anything else."""
    if not isinstance(value, str) or not value.startswith("ed25519:"):
        raise ValueError("public key must be 'ed25519:<base58>'")
    try:
        raw = base58.b58decode(value[len("ed25519:") :])
    except ValueError as exc:
        raise ValueError("public key is not base58") from exc
    if len(raw) != 32:
        raise ValueError("ed25519 public key must be 32 bytes")
    return raw


# ---------------------------------------------------------------------------------------
# Borsh decoding
# ---------------------------------------------------------------------------------------


class BorshError(ValueError):
    """The bytes are not a valid borsh encoding of the expected type."""


T = TypeVar("T")


class BorshReader:
    """Minimal borsh reader: little-endian integers, u32-length-prefixed strings/vecs."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def position(self) -> int:
        return self._pos

    def _take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise BorshError(f"unexpected end of data at byte {self._pos} (wanted {n})")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u8(self) -> int:
        return self._take(1)[0]

    def u32(self) -> int:
        return int(struct.unpack("<I", self._take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self._take(8))[0])

    def u128(self) -> int:
        return int.from_bytes(self._take(16), "little")

    def fixed(self, n: int) -> bytes:
        return self._take(n)

    def bytes_vec(self) -> bytes:
        return self._take(self.u32())

    def string(self) -> str:
        raw = self.bytes_vec()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BorshError("string is not UTF-8") from exc

    def option(self, read: Callable[[], T]) -> T | None:
        flag = self.u8()
        if flag == 0:
            return None
        if flag == 1:
            return read()
        raise BorshError(f"bad Option tag {flag}")

    def vec(self, read: Callable[[], T]) -> list[T]:
        count = self.u32()
        # Every element takes at least one byte: refuse absurd counts before looping.
        if count > len(self._data) - self._pos:
            raise BorshError(f"vector length {count} exceeds remaining data")
        return [read() for _ in range(count)]

    def expect_end(self) -> None:
        if self._pos != len(self._data):
            raise BorshError(f"{len(self._data) - self._pos} trailing bytes")


@dataclass(frozen=True)
class NearPublicKey:
    key_type: int
    data: bytes

    def __str__(self) -> str:
        name = "ed25519" if self.key_type == ED25519 else "secp256k1"
        return f"{name}:{base58.b58encode(self.data).decode()}"


@dataclass(frozen=True)
class CreateAccount:
    pass


@dataclass(frozen=True)
class DeployContract:
    code: bytes


@dataclass(frozen=True)
class FunctionCall:
    method_name: str
    args: bytes
    gas: int
    deposit: int


@dataclass(frozen=True)
class Transfer:
    deposit: int


@dataclass(frozen=True)
class Stake:
    stake: int
    public_key: NearPublicKey


@dataclass(frozen=True)
class AddKey:
    public_key: NearPublicKey
    nonce: int
    full_access: bool
    allowance: int | None = None
    receiver_id: str | None = None
    method_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeleteKey:
    public_key: NearPublicKey


@dataclass(frozen=True)
class DeleteAccount:
    beneficiary_id: str


@dataclass(frozen=True)
class Delegate:
    sender_id: str
    receiver_id: str
    actions: tuple[NearAction, ...]
    nonce: int
    max_block_height: int
    public_key: NearPublicKey
    signature: bytes


@dataclass(frozen=True)
class DeployGlobalContract:
    code: bytes
    by_account_id: bool


@dataclass(frozen=True)
class UseGlobalContract:
    code_hash: bytes | None
    account_id: str | None


@dataclass(frozen=True)
class OtherAction:
    """An action seen in an RPC view that moves no money we accept (e.g. 'CreateAccount')."""

    name: str


NearAction = (
    CreateAccount
    | DeployContract
    | FunctionCall
    | Transfer
    | Stake
    | AddKey
    | DeleteKey
    | DeleteAccount
    | Delegate
    | DeployGlobalContract
    | UseGlobalContract
    | OtherAction
)


@dataclass(frozen=True)
class NearTransaction:
    signer_id: str
    public_key: NearPublicKey
    nonce: int
    receiver_id: str
    block_hash: bytes
    actions: tuple[NearAction, ...]
    encoded: bytes  # the exact borsh bytes the signature and the hash are computed over

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.encoded).digest()

    @property
    def hash_b58(self) -> str:
        return base58.b58encode(self.hash).decode()


@dataclass(frozen=True)
class NearSignedTransaction:
    transaction: NearTransaction
    signature_type: int
    signature: bytes


def _read_public_key(r: BorshReader) -> NearPublicKey:
    key_type = r.u8()
    if key_type not in _KEY_LEN:
        raise BorshError(f"unknown public key type {key_type}")
    return NearPublicKey(key_type, r.fixed(_KEY_LEN[key_type]))


def _read_signature(r: BorshReader) -> tuple[int, bytes]:
    key_type = r.u8()
    if key_type not in _SIG_LEN:
        raise BorshError(f"unknown signature type {key_type}")
    return key_type, r.fixed(_SIG_LEN[key_type])


def _read_add_key(r: BorshReader) -> AddKey:
    public_key = _read_public_key(r)
    nonce = r.u64()
    permission = r.u8()
    if permission == 1:
        return AddKey(public_key, nonce, full_access=True)
    if permission == 0:
        allowance = r.option(r.u128)
        receiver_id = r.string()
        method_names = tuple(r.vec(r.string))
        return AddKey(public_key, nonce, False, allowance, receiver_id, method_names)
    raise BorshError(f"unknown access key permission {permission}")


def _read_action(r: BorshReader, *, allow_delegate: bool = True) -> NearAction:
    tag = r.u8()
    if tag == 0:
        return CreateAccount()
    if tag == 1:
        return DeployContract(r.bytes_vec())
    if tag == 2:
        return FunctionCall(r.string(), r.bytes_vec(), r.u64(), r.u128())
    if tag == 3:
        return Transfer(r.u128())
    if tag == 4:
        return Stake(r.u128(), _read_public_key(r))
    if tag == 5:
        return _read_add_key(r)
    if tag == 6:
        return DeleteKey(_read_public_key(r))
    if tag == 7:
        return DeleteAccount(r.string())
    if tag == 8 and allow_delegate:
        sender_id = r.string()
        receiver_id = r.string()
        inner = tuple(r.vec(lambda: _read_action(r, allow_delegate=False)))
        nonce = r.u64()
        max_block_height = r.u64()
        public_key = _read_public_key(r)
        _, signature = _read_signature(r)
        return Delegate(sender_id, receiver_id, inner, nonce, max_block_height, public_key, signature)
    if tag == 9:
        code = r.bytes_vec()
        mode = r.u8()
        if mode not in (0, 1):
            raise BorshError(f"unknown global contract deploy mode {mode}")
        return DeployGlobalContract(code, by_account_id=mode == 1)
    if tag == 10:
        kind = r.u8()
        if kind == 0:
            return UseGlobalContract(code_hash=r.fixed(32), account_id=None)
        if kind == 1:
            return UseGlobalContract(code_hash=None, account_id=r.string())
        raise BorshError(f"unknown global contract identifier {kind}")
    raise BorshError(f"unknown action variant {tag}")


def decode_transaction(data: bytes) -> tuple[NearTransaction, int]:
    """Decode borsh(Transaction) at the start of `data`; returns it and the bytes consumed."""
    if len(data) >= 2 and data[0] == 1 and data[1] != 0:
        raise BorshError("TransactionV1 is not supported")
    r = BorshReader(data)
    signer_id = r.string()
    public_key = _read_public_key(r)
    nonce = r.u64()
    receiver_id = r.string()
    block_hash = r.fixed(32)
    actions = tuple(r.vec(lambda: _read_action(r)))
    end = r.position
    tx = NearTransaction(signer_id, public_key, nonce, receiver_id, block_hash, actions, data[:end])
    return tx, end


def decode_signed_transaction(signed_transaction_base64: str) -> NearSignedTransaction:
    """Decode a base64 borsh SignedTransaction. Raises BorshError on any malformation,
    including bad base64, truncation and trailing bytes."""
    if not isinstance(signed_transaction_base64, str):
        raise BorshError("signed transaction must be a base64 string")
    if len(signed_transaction_base64) > MAX_SIGNED_TX_BYTES * 4 // 3 + 4:
        raise BorshError("signed transaction too large")
    try:
        raw = base64.b64decode(signed_transaction_base64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BorshError("not valid base64") from exc
    tx, end = decode_transaction(raw)
    r = BorshReader(raw[end:])
    sig_type, signature = _read_signature(r)
    r.expect_end()
    return NearSignedTransaction(tx, sig_type, signature)


# ---------------------------------------------------------------------------------------
# What a payment is
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PaymentTerms:
    amount: int
    method_name: str | None
    quote_id: str | None
    memo: str | None


def _payment_terms(actions: Sequence[NearAction]) -> _PaymentTerms:
    """Accept Transfers and at most one FunctionCall to a payment method; everything they
    attach lands on the receiver (the payment account), so the amount is their sum."""
    if not actions:
        raise PaymentInvalid(PaymentInvalid.NOT_A_PAYMENT, "transaction has no actions")
    amount = 0
    call: FunctionCall | None = None
    for action in actions:
        if isinstance(action, Transfer):
            amount += action.deposit
        elif isinstance(action, FunctionCall):
            if call is not None:
                raise PaymentInvalid(
                    PaymentInvalid.NOT_A_PAYMENT, "more than one function call in the payment"
                )
            if action.method_name not in PAYMENT_METHODS:
                raise PaymentInvalid(
                    PaymentInvalid.NOT_A_PAYMENT, f"method {action.method_name!r} is not a payment"
                )
            call = action
            amount += action.deposit
        else:
            name = type(action).__name__ if not isinstance(action, OtherAction) else action.name
            raise PaymentInvalid(PaymentInvalid.NOT_A_PAYMENT, f"{name} action is not a payment")
    if amount <= 0:
        raise PaymentInvalid(PaymentInvalid.NOT_A_PAYMENT, "no deposit attached")

    quote_id = memo = None
    if call is not None:
        try:
            args = json.loads(call.args.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise PaymentInvalid(PaymentInvalid.MALFORMED, "function call args are not JSON") from exc
        key = PAYMENT_METHODS[call.method_name]
        value = args.get(key) if isinstance(args, dict) else None
        if not isinstance(value, str) or not value:
            raise PaymentInvalid(PaymentInvalid.MALFORMED, f"{call.method_name} args need a string {key!r}")
        if key == "quote_id":
            quote_id = value
        else:
            memo = value
    return _PaymentTerms(amount, call.method_name if call else None, quote_id, memo)


def _verified(
    *,
    tx_hash: str,
    signer_id: str,
    receiver_id: str,
    terms: _PaymentTerms,
    final: bool,
    ledger_time: datetime | None,
    raw: dict[str, Any],
) -> VerifiedPayment:
    return VerifiedPayment(
        chain="near",
        tx_hash=tx_hash,
        from_address=signer_id,
        to_address=receiver_id,
        asset="NEAR",
        amount=terms.amount,
        memo_type="text" if terms.memo is not None else None,
        memo=terms.memo,
        quote_id=terms.quote_id,
        method_name=terms.method_name,
        successful=True,
        final=final,
        ledger_time=ledger_time,
        raw=raw,
    )


# ---------------------------------------------------------------------------------------
# Sandbox: the signed transaction is the payment
# ---------------------------------------------------------------------------------------


class NearSandboxVerifier:
    """Stateless check of a signed NEAR payment transaction (sandbox mode: no chain).

    Proves the transaction is well-formed, signed by the key it names, addressed to the
    payment account and carries a payment. For an implicit signer the key must be the
    account's own key; for a named signer only live mode (RPC) can prove the key belongs
    to the account, which `raw["signer_key_checked"]` reports honestly.
    """

    def __init__(self, payment_account: str) -> None:
        if not is_valid_account_id(payment_account):
            raise ValueError(f"invalid NEAR payment account {payment_account!r}")
        self.payment_account = payment_account

    def verify_signed_transaction(self, signed_transaction_base64: str) -> VerifiedPayment:
        try:
            signed = decode_signed_transaction(signed_transaction_base64)
        except BorshError as exc:
            raise PaymentInvalid(PaymentInvalid.MALFORMED, str(exc)) from exc
        tx = signed.transaction
        if not is_valid_account_id(tx.signer_id) or not is_valid_account_id(tx.receiver_id):
            raise PaymentInvalid(PaymentInvalid.MALFORMED, "invalid account id in transaction")
        if tx.public_key.key_type != ED25519 or signed.signature_type != ED25519:
            raise PaymentInvalid(PaymentInvalid.BAD_SIGNATURE, "only ed25519 keys are supported")
        try:
            VerifyKey(tx.public_key.data).verify(tx.hash, signed.signature)
        except BadSignatureError as exc:
            raise PaymentInvalid(
                PaymentInvalid.BAD_SIGNATURE, "signature does not match the transaction"
            ) from exc
        implicit = is_implicit_account(tx.signer_id)
        if implicit and tx.public_key.data.hex() != tx.signer_id:
            raise PaymentInvalid(
                PaymentInvalid.BAD_SIGNATURE, "key does not belong to the implicit signer account"
            )
        if tx.receiver_id != self.payment_account:
            raise PaymentInvalid(
                PaymentInvalid.WRONG_DESTINATION,
                f"receiver is {tx.receiver_id}, expected {self.payment_account}",
            )
        terms = _payment_terms(tx.actions)
        return _verified(
            tx_hash=tx.hash_b58,
            signer_id=tx.signer_id,
            receiver_id=tx.receiver_id,
            terms=terms,
            final=True,
            ledger_time=None,
            raw={
                "mode": "sandbox",
                "public_key": str(tx.public_key),
                "nonce": tx.nonce,
                "block_hash": base58.b58encode(tx.block_hash).decode(),
                "signer_key_checked": implicit,
            },
        )


# ---------------------------------------------------------------------------------------
# Live: NEAR JSON-RPC
# ---------------------------------------------------------------------------------------


class NearRpcError(Exception):
    """A JSON-RPC error object from a NEAR node (`error.cause.name`, e.g. UNKNOWN_TRANSACTION)."""

    def __init__(self, name: str, cause: str, info: Any, message: str) -> None:
        super().__init__(f"{name}/{cause}: {message}")
        self.name = name
        self.cause = cause
        self.info = info
        self.message = message


_RETRYABLE_CAUSES = {"TIMEOUT_ERROR", "INTERNAL_ERROR", "NO_SYNCED_BLOCKS", "NOT_SYNCED_YET"}


class NearJsonRpc:
    """Plain synchronous NEAR JSON-RPC client. Transport failures, timeouts, 5xx without a
    JSON-RPC body and retryable node errors (TIMEOUT_ERROR, INTERNAL_ERROR) raise
    ChainUnavailable; other node errors raise NearRpcError."""

    def __init__(self, rpc_url: str, timeout: float = 10.0) -> None:
        self.rpc_url = rpc_url
        self._client = httpx2.Client(timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, params: Any) -> Any:
        payload = {"jsonrpc": "2.0", "id": "dontcare", "method": method, "params": params}
        try:
            response = self._client.post(self.rpc_url, json=payload)
        except httpx2.TimeoutException as exc:
            raise ChainUnavailable(f"NEAR RPC timed out ({method})") from exc
        except httpx2.HTTPError as exc:
            raise ChainUnavailable(f"NEAR RPC unreachable ({method}): {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or ("result" not in body and "error" not in body):
            raise ChainUnavailable(f"NEAR RPC answered HTTP {response.status_code} ({method})")
        error = body.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise ChainUnavailable(f"NEAR RPC error ({method}): {error!r}")
            raw_cause = error.get("cause")
            cause: dict[str, Any] = raw_cause if isinstance(raw_cause, dict) else {}
            cause_name = str(cause.get("name") or "")
            message = str(error.get("data") or error.get("message") or "")
            if cause_name in _RETRYABLE_CAUSES or (not cause_name and response.status_code >= 500):
                raise ChainUnavailable(f"NEAR RPC {cause_name or 'error'} ({method}): {message}")
            raise NearRpcError(str(error.get("name") or ""), cause_name, cause.get("info"), message)
        return body["result"]


def _action_from_view(view: Any) -> NearAction:
    """Convert an RPC action view ({"Transfer": {...}} or "CreateAccount") to our types."""
    if isinstance(view, str):
        return OtherAction(view)
    if not isinstance(view, dict) or len(view) != 1:
        raise ValueError(f"unexpected action view {view!r}")
    ((name, body),) = view.items()
    if name == "Transfer":
        return Transfer(parse_u128(body["deposit"]))
    if name == "FunctionCall":
        return FunctionCall(
            method_name=str(body["method_name"]),
            args=base64.b64decode(body.get("args") or ""),
            gas=int(body.get("gas") or 0),
            deposit=parse_u128(body["deposit"]),
        )
    return OtherAction(name)


def _is_failure(status: Any) -> bool:
    return isinstance(status, dict) and "Failure" in status


class NearRpcVerifier:
    """Reads a payment back from NEAR JSON-RPC: amounts, quote id and success come from the
    chain, never from the caller. Only a FINAL transaction with no failed receipt counts.

    `wait_until` is passed to the node: "FINAL" blocks until finality (the node answers
    TIMEOUT_ERROR -> ChainUnavailable if it takes too long); "NONE" answers at once and a
    not-yet-final transaction is refused with NOT_FINAL so the caller retries later.
    """

    def __init__(
        self,
        rpc_url: str,
        payment_account: str,
        timeout: float = 15.0,
        *,
        wait_until: str = "FINAL",
    ) -> None:
        if not is_valid_account_id(payment_account):
            raise ValueError(f"invalid NEAR payment account {payment_account!r}")
        self.payment_account = payment_account
        self.wait_until = wait_until
        self.rpc = NearJsonRpc(rpc_url, timeout=timeout)

    def close(self) -> None:
        self.rpc.close()

    def verify_tx(self, tx_hash: str, sender_account_id: str) -> VerifiedPayment:
        try:
            if len(base58.b58decode(tx_hash)) != 32:
                raise ValueError
        except ValueError as exc:
            raise PaymentInvalid(PaymentInvalid.MALFORMED, "tx hash is not base58 32 bytes") from exc
        if not is_valid_account_id(sender_account_id):
            raise PaymentInvalid(PaymentInvalid.MALFORMED, "invalid sender account id")
        try:
            result = self.rpc.call(
                "EXPERIMENTAL_tx_status",
                {
                    "tx_hash": tx_hash,
                    "sender_account_id": sender_account_id,
                    "wait_until": self.wait_until,
                },
            )
        except NearRpcError as exc:
            if exc.cause == "UNKNOWN_TRANSACTION":
                raise PaymentInvalid(PaymentInvalid.NOT_FOUND, "transaction not found") from exc
            if exc.cause == "INVALID_TRANSACTION":
                raise PaymentInvalid(PaymentInvalid.TX_FAILED, exc.message) from exc
            if exc.cause in ("PARSE_ERROR", "REQUEST_VALIDATION_ERROR"):
                raise PaymentInvalid(PaymentInvalid.MALFORMED, exc.message) from exc
            raise ChainUnavailable(f"NEAR RPC error {exc.cause or exc.name}: {exc.message}") from exc
        try:
            return self._read_outcome(result, tx_hash, sender_account_id)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ChainUnavailable(f"unexpected tx_status shape: {exc!r}") from exc

    def _read_outcome(self, result: dict[str, Any], tx_hash: str, sender_account_id: str) -> VerifiedPayment:
        tx = result["transaction"]
        if tx["hash"] != tx_hash:
            raise ChainUnavailable("node returned a different transaction")
        if tx["signer_id"] != sender_account_id:
            raise PaymentInvalid(PaymentInvalid.WRONG_SENDER, "signer does not match the sender")
        if tx["receiver_id"] != self.payment_account:
            raise PaymentInvalid(
                PaymentInvalid.WRONG_DESTINATION,
                f"receiver is {tx['receiver_id']}, expected {self.payment_account}",
            )
        # Verdicts only on final data: an optimistic outcome can still change block.
        if result.get("final_execution_status") != "FINAL":
            raise PaymentInvalid(
                PaymentInvalid.NOT_FINAL,
                f"execution status is {result.get('final_execution_status')}",
            )
        outcomes = [result["transaction_outcome"], *result.get("receipts_outcome", [])]
        status = result.get("status")
        if _is_failure(status) or any(_is_failure(o["outcome"]["status"]) for o in outcomes):
            raise PaymentInvalid(PaymentInvalid.TX_FAILED, "the transaction or a receipt failed")
        if not isinstance(status, dict) or "SuccessValue" not in status:
            raise PaymentInvalid(PaymentInvalid.NOT_FINAL, f"execution status is {status!r}")

        actions = [_action_from_view(a) for a in tx["actions"]]
        terms = _payment_terms(actions)
        block_hash = result["transaction_outcome"]["block_hash"]
        return _verified(
            tx_hash=tx_hash,
            signer_id=tx["signer_id"],
            receiver_id=tx["receiver_id"],
            terms=terms,
            final=True,
            ledger_time=self._block_time(block_hash),
            raw={
                "mode": "live",
                "public_key": tx.get("public_key"),
                "nonce": tx.get("nonce"),
                "block_hash": block_hash,
                "final_execution_status": result.get("final_execution_status"),
            },
        )

    def _block_time(self, block_hash: str) -> datetime | None:
        """Best effort: the including block's timestamp (nanoseconds). Old blocks may be
        garbage-collected on non-archival nodes, so a miss is not an error."""
        try:
            block = self.rpc.call("block", {"block_id": block_hash})
            nanos = int(block["header"]["timestamp"])
        except (ChainUnavailable, NearRpcError, KeyError, TypeError, ValueError):
            return None
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=nanos // 1000)
