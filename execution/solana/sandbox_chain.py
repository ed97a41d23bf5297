"""The sandbox chain: a LiteSVM instance with a block clock, a status history and persistence.

`SandboxChain` is what the sandbox JSON-RPC server (`sandbox.py`) exposes. It returns the
same JSON shapes a real validator returns and raises `RpcError` with real error codes.

Cluster rules it reproduces (LiteSVM alone does not):

* Blocks. LiteSVM has no blocks and accepts only its single latest blockhash. Here the
  block height advances with wall time (one block per `slot_ms`, 400 ms like mainnet;
  0 = only when an admin call advances it). Each height has its own blockhash; a
  transaction is accepted while `block_height <= height_of(its blockhash) + 150`, which is
  the `lastValidBlockHeight` that getLatestBlockhash returns. LiteSVM's own blockhash
  check is switched off and this one is used instead. Slot = block height + a constant
  offset, so code that mixes up getSlot and getBlockHeight fails here too.
* sendTransaction with skipPreflight behaves like a real RPC node: it answers with the
  signature even when the transaction can never land (expired blockhash, duplicate,
  bad signature, fee payer cannot pay); such a transaction is silently dropped and never
  gets a status. Only a landed transaction (success, or failure with its fee charged)
  gets a status. Without skipPreflight the node verifies signatures (-32003) and simulates
  first (-32002 "Transaction simulation failed: ...").
* Replays. Every landed signature is kept forever in SQLite and checked before LiteSVM
  (whose own history is bounded), so the same signed bytes never execute twice, also
  across restarts.
* getSignatureStatuses without searchTransactionHistory only sees the last 300 slots
  (the validator's status cache); with it, every transaction ever landed.
* getTransaction of a v0 transaction requires maxSupportedTransactionVersion (-32015).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from solders.account import Account
from solders.clock import Clock
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message, MessageV0, from_bytes_versioned
from solders.pubkey import Pubkey
from solders.rpc.responses import RpcSimulateTransactionResult
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.token.state import Mint, TokenAccount, TokenAccountState
from solders.transaction import VersionedTransaction
from solders.transaction_metadata import (
    FailedTransactionMetadata,
    SimulatedTransactionInfo,
    TransactionMetadata,
)
from solders.transaction_status import TransactionErrorFieldless

from .sandbox_store import SandboxStore, StoredTransaction

logger = logging.getLogger(__name__)

API_VERSION = "2.3.0"
FEATURE_SET = 3294202862

MAX_PROCESSING_AGE = 150  # blocks a blockhash stays valid (solana MAX_PROCESSING_AGE)
STATUS_CACHE_SLOTS = 300  # slots the status cache answers without searchTransactionHistory
PACKET_DATA_SIZE = 1232  # max wire size of a transaction
LAMPORTS_PER_SIGNATURE = 5000
MAX_COMPUTE_UNIT_LIMIT = 1_400_000
DEFAULT_INSTRUCTION_CU_LIMIT = 200_000
BUILTIN_INSTRUCTION_CU_LIMIT = 3_000  # feature reserve_minimal_cus_for_builtin_instructions
GENESIS_BLOCK_HEIGHT = 1
SLOT_OFFSET = 1000  # slot = block height + SLOT_OFFSET (as if 1000 slots had been skipped)
FAUCET_LAMPORTS = 500_000_000 * 10**9  # 500M SOL

SYSTEM_PROGRAM_ID = Pubkey.from_string("11111111111111111111111111111111")
COMPUTE_BUDGET_PROGRAM_ID = Pubkey.from_string("ComputeBudget111111111111111111111111111111")
TOKEN_PROGRAM_ID = Pubkey.from_string("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA")
TOKEN_2022_PROGRAM_ID = Pubkey.from_string("TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb")
ASSOCIATED_TOKEN_PROGRAM_ID = Pubkey.from_string("ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL")
MEMO_PROGRAM_ID = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")
SYSVAR_OWNER_ID = Pubkey.from_string("Sysvar1111111111111111111111111111111111111")
NATIVE_LOADER_ID = Pubkey.from_string("NativeLoader1111111111111111111111111111111")

# Programs whose instructions reserve 3,000 CU (not 200,000) when no limit is set.
_BUILTIN_PROGRAM_IDS = frozenset(
    Pubkey.from_string(s)
    for s in (
        "11111111111111111111111111111111",
        "ComputeBudget111111111111111111111111111111",
        "Vote111111111111111111111111111111111111111",
        "Stake11111111111111111111111111111111111111",
        "BPFLoader1111111111111111111111111111111111",
        "BPFLoader2111111111111111111111111111111111",
        "BPFLoaderUpgradeab1e11111111111111111111111",
        "LoaderV411111111111111111111111111111111111",
        "AddressLookupTab1e1111111111111111111111111",
        "Ed25519SigVerify111111111111111111111111111",
        "KeccakSecp256k11111111111111111111111111111",
        "Secp256r1SigVerify1111111111111111111111111",
    )
)
_NOT_PERSISTED_OWNERS = frozenset(
    {
        SYSVAR_OWNER_ID,
        NATIVE_LOADER_ID,
        Pubkey.from_string("BPFLoader1111111111111111111111111111111111"),
        Pubkey.from_string("BPFLoader2111111111111111111111111111111111"),
        Pubkey.from_string("BPFLoaderUpgradeab1e11111111111111111111111"),
        Pubkey.from_string("LoaderV411111111111111111111111111111111111"),
    }
)

# JSON-RPC error codes of a real node (agave rpc_custom_error.rs and JSON-RPC 2.0).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
PREFLIGHT_FAILURE = -32002
SIGNATURE_VERIFICATION_FAILURE = -32003
UNSUPPORTED_TRANSACTION_VERSION = -32015

# Display strings of common TransactionErrors (what the preflight message shows).
_ERROR_DISPLAY = {
    "AccountInUse": "Account in use",
    "AccountNotFound": "Attempt to debit an account but found no record of a prior credit.",
    "AlreadyProcessed": "This transaction has already been processed",
    "BlockhashNotFound": "Blockhash not found",
    "InsufficientFundsForFee": "Insufficient funds for fee",
    "InvalidAccountForFee": "This account may not be used to pay transaction fees",
    "SignatureFailure": "Transaction did not pass signature verification",
}


class RpcError(Exception):
    """A JSON-RPC error object as a real node sends it."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out


# -- encoding helpers -----------------------------------------------------------------------

_B58_ALPHABET = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = bytearray()
    while n:
        n, r = divmod(n, 58)
        out.append(_B58_ALPHABET[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return (b"1" * pad + bytes(reversed(out))).decode()


def b58decode(text: str) -> bytes:
    raw = text.encode()
    n = 0
    for c in raw:
        n = n * 58 + _B58_INDEX[c]  # KeyError on a bad character
    pad = len(raw) - len(raw.lstrip(b"1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * pad + body


def error_to_json(err: Any) -> Any:
    """Serialize a solders TransactionError the way the RPC does (serde JSON)."""
    if err is None:
        return None
    encoded = RpcSimulateTransactionResult(err=err, logs=None, accounts=None, units_consumed=None)
    return json.loads(encoded.to_json())["err"]


def error_display(err_json: Any) -> str:
    if isinstance(err_json, str):
        return _ERROR_DISPLAY.get(err_json, err_json)
    if isinstance(err_json, dict) and "InstructionError" in err_json:
        index, inner = err_json["InstructionError"]
        if isinstance(inner, dict) and "Custom" in inner:
            return f"Error processing Instruction {index}: custom program error: {inner['Custom']:#x}"
        return f"Error processing Instruction {index}: {inner}"
    return json.dumps(err_json)


def ui_token_amount(amount: int, decimals: int) -> dict[str, Any]:
    value = Decimal(amount).scaleb(-decimals)
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return {
        "amount": str(amount),
        "decimals": decimals,
        "uiAmount": float(value),
        "uiAmountString": text,
    }


def ui_account(account: Account | None, encoding: str) -> dict[str, Any] | None:
    """The UiAccount JSON of getAccountInfo and friends; None for a missing account."""
    if account is None or account.lamports == 0:
        return None
    data = bytes(account.data)
    if encoding in ("base64", "jsonParsed"):
        # jsonParsed: a node answers base64 for accounts it cannot parse; we parse none.
        encoded: Any = [base64.b64encode(data).decode(), "base64"]
    elif encoding in ("base58", "binary"):
        if len(data) > 128:
            raise RpcError(
                INVALID_PARAMS,
                "Encoded binary (base 58) data should be less than 128 bytes, please use Base64 encoding.",
            )
        encoded = b58encode(data) if encoding == "binary" else [b58encode(data), "base58"]
    else:
        raise RpcError(INVALID_PARAMS, f"Invalid params: unsupported encoding {encoding!r}")
    return {
        "lamports": account.lamports,
        "owner": str(account.owner),
        "data": encoded,
        "executable": account.executable,
        "rentEpoch": account.rent_epoch,
        "space": len(data),
    }


def decode_transaction(payload: str, encoding: str) -> tuple[VersionedTransaction, bytes]:
    """Wire bytes of sendTransaction/simulateTransaction → transaction, with node errors."""
    try:
        if encoding == "base64":
            max_encoded = 1644
            if len(payload) > max_encoded:
                raise RpcError(
                    INVALID_PARAMS,
                    f"base64 encoded solana_transaction::versioned::VersionedTransaction too "
                    f"large: {len(payload)} bytes (max: encoded/raw {max_encoded}/"
                    f"{PACKET_DATA_SIZE})",
                )
            raw = base64.b64decode(payload, validate=True)
        elif encoding in ("base58", "binary"):
            raw = b58decode(payload)
        else:
            raise RpcError(INVALID_PARAMS, f"Invalid params: unsupported encoding {encoding!r}")
    except (ValueError, KeyError) as exc:
        raise RpcError(INVALID_PARAMS, f"invalid {encoding} encoding: {exc}") from None
    if len(raw) > PACKET_DATA_SIZE:
        raise RpcError(
            INVALID_PARAMS,
            f"decoded solana_transaction::versioned::VersionedTransaction too large: "
            f"{len(raw)} bytes (max: {PACKET_DATA_SIZE} bytes)",
        )
    try:
        tx = VersionedTransaction.from_bytes(raw)
    except Exception as exc:  # solders raises its own error types
        raise RpcError(
            INVALID_PARAMS,
            f"failed to deserialize solana_transaction::versioned::VersionedTransaction: {exc}",
        ) from None
    if not isinstance(tx.message, (Message, MessageV0)):
        # solders can decode newer message versions that clusters do not accept yet.
        raise RpcError(INVALID_PARAMS, "invalid transaction: unsupported message version")
    try:
        tx.sanitize()
    except Exception as exc:
        raise RpcError(INVALID_PARAMS, f"invalid transaction: {exc}") from None
    return tx, raw


def compute_fee(message: Message | MessageV0) -> int:
    """Lamports the fee payer is charged: signatures plus the priority fee.

    priority fee = ceil(CU limit × micro-lamports per CU / 10^6). Without a
    SetComputeUnitLimit instruction the limit is 3,000 CU per builtin instruction
    plus 200,000 CU per other instruction (capped at 1.4M), as the runtime computes it.
    """
    keys = message.account_keys
    limit: int | None = None
    price = 0
    builtin = 0
    other = 0
    for ix in message.instructions:
        program_id = keys[ix.program_id_index]
        if program_id == COMPUTE_BUDGET_PROGRAM_ID:
            builtin += 1
            data = bytes(ix.data)
            if data[:1] == b"\x02" and len(data) >= 5:
                limit = struct.unpack_from("<I", data, 1)[0]
            elif data[:1] == b"\x03" and len(data) >= 9:
                price = struct.unpack_from("<Q", data, 1)[0]
        elif program_id in _BUILTIN_PROGRAM_IDS:
            builtin += 1
        else:
            other += 1
    if limit is None:
        limit = builtin * BUILTIN_INSTRUCTION_CU_LIMIT + other * DEFAULT_INSTRUCTION_CU_LIMIT
    limit = min(limit, MAX_COMPUTE_UNIT_LIMIT)
    priority_fee = -(-limit * price // 1_000_000)
    return LAMPORTS_PER_SIGNATURE * message.header.num_required_signatures + priority_fee


def _is_static_writable(message: Message | MessageV0, index: int) -> bool:
    header = message.header
    signed = header.num_required_signatures
    if index < signed:
        return index < signed - header.num_readonly_signed_accounts
    return index < len(message.account_keys) - header.num_readonly_unsigned_accounts


# -- the chain ------------------------------------------------------------------------------


class SandboxChain:
    """LiteSVM plus the cluster rules above. Thread-safe: one lock around everything."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        ledger_history: int = 50_000,
        slot_ms: int = 400,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.RLock()
        self._monotonic = monotonic
        self.slot_ms = slot_ms
        self.store = SandboxStore(None if data_dir is None else Path(data_dir))
        # The fee/CU rules of LiteSVM's default feature set are what the tests measure.
        self.svm = LiteSVM().with_transaction_history(ledger_history).with_blockhash_check(False)
        seed_hex = self.store.get_meta("genesis_seed")
        if seed_hex is None:
            self._seed = os.urandom(32)
            self.block_height = GENESIS_BLOCK_HEIGHT
        else:
            self._seed = bytes.fromhex(seed_hex)
            self.block_height = int(self.store.get_meta("block_height") or GENESIS_BLOCK_HEIGHT)
        self.faucet = Keypair.from_seed(hashlib.sha256(self._seed + b"faucet").digest())
        self._airdrop_counter = int(self.store.get_meta("airdrop_counter") or 0)
        self._recent_blockhashes: dict[Hash, int] = {}
        for height in range(max(0, self.block_height - MAX_PROCESSING_AGE), self.block_height + 1):
            self._recent_blockhashes[self._blockhash_at(height)] = height
        self._last_tick = self._monotonic()
        self._sync_clock()
        if seed_hex is None:
            faucet_account = Account(FAUCET_LAMPORTS, b"", SYSTEM_PROGRAM_ID, False, 0)
            self.svm.set_account(self.faucet.pubkey(), faucet_account)
            self.store.commit(
                accounts=[(self.faucet.pubkey(), faucet_account)],
                meta={"genesis_seed": self._seed.hex(), **self._height_meta()},
            )
        else:
            for pubkey, account in self.store.iter_accounts():
                self.svm.set_account(pubkey, account)

    # -- clock and blockhashes ----------------------------------------------------------

    @property
    def slot(self) -> int:
        return self.block_height + SLOT_OFFSET

    def _blockhash_at(self, height: int) -> Hash:
        return Hash(hashlib.sha256(self._seed + height.to_bytes(8, "little")).digest())

    def _height_meta(self) -> dict[str, str]:
        return {"block_height": str(self.block_height)}

    def _sync_clock(self) -> None:
        self.svm.set_clock(
            Clock(
                slot=self.slot,
                epoch_start_timestamp=0,
                epoch=0,
                leader_schedule_epoch=1,
                unix_timestamp=int(time.time()),
            )
        )

    def _advance(self, blocks: int) -> None:
        if blocks <= 0:
            return
        self.block_height += blocks
        current = self._blockhash_at(self.block_height)
        self._recent_blockhashes[current] = self.block_height
        if len(self._recent_blockhashes) > 4 * MAX_PROCESSING_AGE:
            oldest = self.block_height - MAX_PROCESSING_AGE - 1
            self._recent_blockhashes = {bh: h for bh, h in self._recent_blockhashes.items() if h >= oldest}
        self._sync_clock()

    def _tick(self) -> None:
        """Produce the blocks that wall time says have passed since the last call."""
        if self.slot_ms <= 0:
            return
        now = self._monotonic()
        blocks = int((now - self._last_tick) * 1000 // self.slot_ms)
        if blocks > 0:
            self._last_tick += blocks * self.slot_ms / 1000
            self._advance(blocks)

    def _latest_blockhash(self) -> tuple[Hash, int]:
        blockhash = self._blockhash_at(self.block_height)
        self._recent_blockhashes[blockhash] = self.block_height
        return blockhash, self.block_height + MAX_PROCESSING_AGE

    def _blockhash_valid(self, blockhash: Hash) -> bool:
        height = self._recent_blockhashes.get(blockhash)
        return height is not None and self.block_height <= height + MAX_PROCESSING_AGE

    def context(self) -> dict[str, Any]:
        return {"slot": self.slot, "apiVersion": API_VERSION}

    # -- read methods (results are JSON values) ------------------------------------------

    def get_slot(self) -> int:
        with self._lock:
            self._tick()
            return self.slot

    def get_block_height(self) -> int:
        with self._lock:
            self._tick()
            return self.block_height

    def get_latest_blockhash(self) -> dict[str, Any]:
        with self._lock:
            self._tick()
            blockhash, last_valid = self._latest_blockhash()
            return {
                "context": self.context(),
                "value": {"blockhash": str(blockhash), "lastValidBlockHeight": last_valid},
            }

    def is_blockhash_valid(self, blockhash: Hash) -> dict[str, Any]:
        with self._lock:
            self._tick()
            return {"context": self.context(), "value": self._blockhash_valid(blockhash)}

    def get_account(self, pubkey: Pubkey) -> Account | None:
        with self._lock:
            account = self.svm.get_account(pubkey)
            return None if account is None or account.lamports == 0 else account

    def get_balance(self, pubkey: Pubkey) -> dict[str, Any]:
        with self._lock:
            self._tick()
            return {"context": self.context(), "value": self.svm.get_balance(pubkey) or 0}

    def get_account_info(self, pubkey: Pubkey, encoding: str) -> dict[str, Any]:
        with self._lock:
            self._tick()
            account = self.svm.get_account(pubkey)
            return {"context": self.context(), "value": ui_account(account, encoding)}

    def get_multiple_accounts(self, pubkeys: Sequence[Pubkey], encoding: str) -> dict[str, Any]:
        with self._lock:
            self._tick()
            accounts = [ui_account(self.svm.get_account(pk), encoding) for pk in pubkeys]
            return {"context": self.context(), "value": accounts}

    def get_token_account_balance(self, pubkey: Pubkey) -> dict[str, Any]:
        with self._lock:
            self._tick()
            account = self.svm.get_account(pubkey)
            if account is None or account.lamports == 0:
                raise RpcError(INVALID_PARAMS, "Invalid param: could not find account")
            parsed = self._parse_token_account(account)
            if parsed is None:
                raise RpcError(INVALID_PARAMS, "Invalid param: not a Token account")
            token_account, decimals = parsed
            return {
                "context": self.context(),
                "value": ui_token_amount(token_account.amount, decimals),
            }

    def minimum_balance_for_rent_exemption(self, size: int) -> int:
        with self._lock:
            return self.svm.minimum_balance_for_rent_exemption(size)

    def get_fee_for_message(self, message: Message | MessageV0) -> dict[str, Any]:
        with self._lock:
            self._tick()
            fee = compute_fee(message) if self._blockhash_valid(message.recent_blockhash) else None
            return {"context": self.context(), "value": fee}

    def get_signature_statuses(self, signatures: Sequence[Signature], search_history: bool) -> dict[str, Any]:
        with self._lock:
            self._tick()
            oldest_cached_slot = self.slot - STATUS_CACHE_SLOTS
            statuses: list[dict[str, Any] | None] = []
            for signature in signatures:
                found = self.store.transaction_status(bytes(signature))
                if found is None or (not search_history and found[0] < oldest_cached_slot):
                    statuses.append(None)
                    continue
                slot, err = found
                statuses.append(
                    {
                        "slot": slot,
                        "confirmations": None,
                        "err": err,
                        "status": {"Ok": None} if err is None else {"Err": err},
                        "confirmationStatus": "finalized",
                    }
                )
            return {"context": self.context(), "value": statuses}

    def get_transaction(
        self, signature: Signature, encoding: str, max_supported_version: int | None
    ) -> dict[str, Any] | None:
        with self._lock:
            stored = self.store.get_transaction(bytes(signature))
        if stored is None:
            return None
        assert stored.raw is not None
        tx = VersionedTransaction.from_bytes(stored.raw)
        message = tx.message
        version: Any = 0 if isinstance(message, MessageV0) else "legacy"
        if version == 0 and max_supported_version is None:
            raise RpcError(
                UNSUPPORTED_TRANSACTION_VERSION,
                "Transaction version (0) is not supported by the requesting client. "
                "Please try the request again with the following configuration parameter: "
                '"maxSupportedTransactionVersion": 0',
            )
        if encoding == "base64":
            encoded: Any = [base64.b64encode(stored.raw).decode(), "base64"]
        elif encoding in ("json", "jsonParsed"):
            # jsonParsed is answered in json form: instruction parsing is not implemented.
            encoded = _transaction_json(tx)
        elif encoding in ("base58", "binary"):
            encoded = b58encode(stored.raw) if encoding == "binary" else [b58encode(stored.raw), "base58"]
        else:
            raise RpcError(INVALID_PARAMS, f"Invalid params: unsupported encoding {encoding!r}")
        meta = dict(stored.meta)
        if version == "legacy":
            meta.pop("loadedAddresses", None)
        return {
            "slot": stored.slot,
            "blockTime": stored.block_time,
            "transaction": encoded,
            "meta": meta,
            "version": version,
        }

    def transaction_count(self) -> int:
        with self._lock:
            return self.store.transaction_count()

    # -- simulate and send ---------------------------------------------------------------

    def simulate(
        self,
        tx: VersionedTransaction,
        *,
        sig_verify: bool = False,
        replace_recent_blockhash: bool = False,
        addresses: Sequence[Pubkey] | None = None,
        encoding: str = "base64",
    ) -> dict[str, Any]:
        if sig_verify and replace_recent_blockhash:
            raise RpcError(INVALID_PARAMS, "sigVerify may not be used with replaceRecentBlockhash")
        if sig_verify and not all(tx.verify_with_results()):
            raise RpcError(SIGNATURE_VERIFICATION_FAILURE, "Transaction signature verification failure")
        with self._lock:
            self._tick()
            value = self._simulate_locked(tx, replace_recent_blockhash, addresses, encoding)
            return {"context": self.context(), "value": value}

    def _simulate_locked(
        self,
        tx: VersionedTransaction,
        replace_recent_blockhash: bool,
        addresses: Sequence[Pubkey] | None,
        encoding: str,
    ) -> dict[str, Any]:
        replacement = None
        if replace_recent_blockhash:
            blockhash, last_valid = self._latest_blockhash()
            replacement = {"blockhash": str(blockhash), "lastValidBlockHeight": last_valid}
        elif not self._blockhash_valid(tx.message.recent_blockhash):
            return _simulation_value("BlockhashNotFound", addresses=addresses)
        if self.store.has_transaction(bytes(tx.signatures[0])):
            return _simulation_value("AlreadyProcessed", addresses=addresses)
        self.svm.with_sigverify(False)
        try:
            result = self.svm.simulate_transaction(tx)
        finally:
            self.svm.with_sigverify(True)
        if isinstance(result, FailedTransactionMetadata):
            meta = result.meta()
            return _simulation_value(
                error_to_json(result.err()),
                logs=meta.logs(),
                units=meta.compute_units_consumed(),
                addresses=addresses,
                replacement=replacement,
            )
        assert isinstance(result, SimulatedTransactionInfo)
        meta = result.meta()
        accounts = None
        if addresses is not None:
            post = dict(result.post_accounts())
            accounts = [
                ui_account(post[pk] if pk in post else self.svm.get_account(pk), encoding) for pk in addresses
            ]
        return {
            "err": None,
            "logs": meta.logs(),
            "accounts": accounts,
            "unitsConsumed": meta.compute_units_consumed(),
            "returnData": _return_data_json(meta),
            "innerInstructions": None,
            "replacementBlockhash": replacement,
        }

    def send(self, tx: VersionedTransaction, raw: bytes, *, skip_preflight: bool) -> tuple[str, bool]:
        """sendTransaction: returns (signature, landed). Raises RpcError only on preflight."""
        if not skip_preflight and not all(tx.verify_with_results()):
            raise RpcError(SIGNATURE_VERIFICATION_FAILURE, "Transaction signature verification failure")
        with self._lock:
            self._tick()
            if not skip_preflight:
                value = self._simulate_locked(tx, False, None, "base64")
                if value["err"] is not None:
                    raise RpcError(
                        PREFLIGHT_FAILURE,
                        f"Transaction simulation failed: {error_display(value['err'])}",
                        data=value,
                    )
            landed = self._execute_locked(tx, raw)
        return str(tx.signatures[0]), landed

    def _execute_locked(self, tx: VersionedTransaction, raw: bytes) -> bool:
        """Run a transaction. False when a real leader would drop it without a trace."""
        signature = tx.signatures[0]
        if self.store.has_transaction(bytes(signature)):
            return False
        message = tx.message
        assert isinstance(message, (Message, MessageV0))  # decode_transaction guarantees it
        if not self._blockhash_valid(message.recent_blockhash):
            return False
        loaded = self._loaded_addresses(message)
        if loaded is None:
            return False
        loaded_writable, loaded_readonly = loaded
        static_keys = list(message.account_keys)
        keys = static_keys + loaded_writable + loaded_readonly
        writable = [_is_static_writable(message, i) for i in range(len(static_keys))]
        writable += [True] * len(loaded_writable) + [False] * len(loaded_readonly)
        pre_accounts = [self.svm.get_account(k) for k in keys]

        result = self.svm.send_transaction(tx)
        if isinstance(result, FailedTransactionMetadata):
            err = result.err()
            if err == TransactionErrorFieldless.AlreadyProcessed:
                return False
            if self.svm.get_transaction(signature) is None:
                return False  # not landed: signature, fee payer or sanitize failure
            meta = result.meta()
            err_json = error_to_json(err)
        else:
            meta = result
            err_json = None

        # From here on LiteSVM has changed: whatever happens, the store must follow it.
        post_accounts = [self.svm.get_account(k) for k in keys]
        block_time = int(time.time())
        try:
            meta_json = self._meta_json(
                meta, err_json, pre_accounts, post_accounts, loaded_writable, loaded_readonly
            )
        except Exception as exc:  # a reporting bug must not lose a landed transaction
            logger.exception("sandbox: building transaction meta failed")
            meta_json = {
                "err": err_json,
                "status": {"Ok": None} if err_json is None else {"Err": err_json},
                "fee": meta.fee(),
                "preBalances": [0 if a is None else a.lamports for a in pre_accounts],
                "postBalances": [0 if a is None else a.lamports for a in post_accounts],
                "logMessages": [f"sandbox: meta incomplete: {exc!r}"],
            }
        changed = [
            (key, account)
            for key, account, is_writable in zip(keys, post_accounts, writable, strict=True)
            if is_writable and _persistable(account)
        ]
        self.store.commit(
            accounts=changed,
            transaction=StoredTransaction(
                signature=bytes(signature),
                slot=self.slot,
                block_time=block_time,
                err=err_json,
                raw=raw,
                meta=meta_json,
            ),
            meta=self._height_meta(),
        )
        return True

    def _meta_json(
        self,
        meta: TransactionMetadata,
        err_json: Any,
        pre_accounts: Sequence[Account | None],
        post_accounts: Sequence[Account | None],
        loaded_writable: Sequence[Pubkey],
        loaded_readonly: Sequence[Pubkey],
    ) -> dict[str, Any]:
        """The `meta` object of getTransaction (json encoding)."""
        return {
            "err": err_json,
            "status": {"Ok": None} if err_json is None else {"Err": err_json},
            "fee": meta.fee(),
            "preBalances": [0 if a is None else a.lamports for a in pre_accounts],
            "postBalances": [0 if a is None else a.lamports for a in post_accounts],
            "innerInstructions": _inner_instructions_json(meta),
            "logMessages": meta.logs(),
            "preTokenBalances": self._token_balances(pre_accounts),
            "postTokenBalances": self._token_balances(post_accounts),
            "rewards": [],
            "loadedAddresses": {
                "writable": [str(k) for k in loaded_writable],
                "readonly": [str(k) for k in loaded_readonly],
            },
            "computeUnitsConsumed": meta.compute_units_consumed(),
            "returnData": _return_data_json(meta),
        }

    def _loaded_addresses(self, message: Message | MessageV0) -> tuple[list[Pubkey], list[Pubkey]] | None:
        if not isinstance(message, MessageV0) or not message.address_table_lookups:
            return [], []
        writable: list[Pubkey] = []
        readonly: list[Pubkey] = []
        for lookup in message.address_table_lookups:
            table = self.svm.get_account(lookup.account_key)
            if table is None:
                return None
            addresses = bytes(table.data)[56:]
            try:
                for target, indexes in (
                    (writable, lookup.writable_indexes),
                    (readonly, lookup.readonly_indexes),
                ):
                    for i in indexes:
                        chunk = addresses[32 * i : 32 * i + 32]
                        if len(chunk) != 32:
                            return None
                        target.append(Pubkey.from_bytes(chunk))
            except ValueError:
                return None
        return writable, readonly

    def _parse_token_account(self, account: Account) -> tuple[TokenAccount, int] | None:
        if account.owner not in (TOKEN_PROGRAM_ID, TOKEN_2022_PROGRAM_ID):
            return None
        data = bytes(account.data)
        # A Token-2022 account with extensions is longer and says "account" (2) at byte 165.
        if len(data) < 165 or (len(data) > 165 and data[165] != 2):
            return None
        try:
            token_account = TokenAccount.from_bytes(data[:165])
        except Exception:
            return None
        if token_account.state == TokenAccountState.Uninitialized:
            return None
        mint_account = self.svm.get_account(token_account.mint)
        if mint_account is None or len(mint_account.data) < 82:
            return None
        decimals = Mint.from_bytes(bytes(mint_account.data)[:82]).decimals
        return token_account, decimals

    def _token_balances(self, accounts: Sequence[Account | None]) -> list[dict[str, Any]]:
        balances = []
        for index, account in enumerate(accounts):
            if account is None or account.owner not in (TOKEN_PROGRAM_ID, TOKEN_2022_PROGRAM_ID):
                continue
            parsed = self._parse_token_account(account)
            if parsed is None:
                continue
            token_account, decimals = parsed
            balances.append(
                {
                    "accountIndex": index,
                    "mint": str(token_account.mint),
                    "owner": str(token_account.owner),
                    "programId": str(account.owner),
                    "uiTokenAmount": ui_token_amount(token_account.amount, decimals),
                }
            )
        return balances

    # -- sandbox-only administration -----------------------------------------------------

    def airdrop(self, pubkey: Pubkey, lamports: int) -> str:
        """A real transfer from the sandbox faucet (fee paid by the faucet)."""
        if lamports <= 0:
            raise RpcError(INVALID_PARAMS, "Invalid params: lamports must be positive")
        with self._lock:
            self._tick()
            self._airdrop_counter += 1
            blockhash, _ = self._latest_blockhash()
            instructions = [
                # The memo makes each airdrop unique: two equal transfers in one block would
                # otherwise be the same transaction and the second one would be a replay.
                Instruction(MEMO_PROGRAM_ID, f"airdrop {self._airdrop_counter}".encode(), []),
                transfer(
                    TransferParams(from_pubkey=self.faucet.pubkey(), to_pubkey=pubkey, lamports=lamports)
                ),
            ]
            message = MessageV0.try_compile(self.faucet.pubkey(), instructions, [], blockhash)
            tx = VersionedTransaction(message, [self.faucet])
            self.store.commit(meta={"airdrop_counter": str(self._airdrop_counter)})
            raw = bytes(tx)
            self.svm.with_sigverify(False)  # the faucet signed it itself; skip the cost
            try:
                landed = self._execute_locked(tx, raw)
            finally:
                self.svm.with_sigverify(True)
            status = self.store.transaction_status(bytes(tx.signatures[0]))
            if not landed or status is None or status[1] is not None:
                err = None if status is None else status[1]
                raise RpcError(INTERNAL_ERROR, f"airdrop failed: {err}")
            return str(tx.signatures[0])

    def set_account(self, pubkey: Pubkey, account: Account) -> None:
        with self._lock:
            self.svm.set_account(pubkey, account)
            self.store.commit(accounts=[(pubkey, account)])

    def create_mint(
        self,
        *,
        mint_authority: Pubkey,
        decimals: int = 6,
        freeze_authority: Pubkey | None = None,
        mint: Pubkey | None = None,
    ) -> Pubkey:
        """An initialized SPL Token mint written directly into the state."""
        mint = mint or Keypair().pubkey()
        data = bytes(Mint(mint_authority, 0, decimals, True, freeze_authority))
        with self._lock:
            if self.svm.get_account(mint) is not None:
                raise RpcError(INVALID_PARAMS, f"Invalid params: account {mint} already exists")
            lamports = self.svm.minimum_balance_for_rent_exemption(len(data))
            self.set_account(mint, Account(lamports, data, TOKEN_PROGRAM_ID, False, 0))
        return mint

    def mint_to(self, *, mint: Pubkey, owner: Pubkey, amount: int) -> Pubkey:
        """Credit `amount` to the owner's associated token account (created if missing)."""
        from solders.token.associated import get_associated_token_address

        if amount < 0:
            raise RpcError(INVALID_PARAMS, "Invalid params: amount must not be negative")
        with self._lock:
            mint_account = self.svm.get_account(mint)
            if mint_account is None or mint_account.owner != TOKEN_PROGRAM_ID:
                raise RpcError(INVALID_PARAMS, f"Invalid params: {mint} is not an SPL Token mint")
            mint_state = Mint.from_bytes(bytes(mint_account.data)[:82])
            ata = get_associated_token_address(owner, mint)
            existing = self.svm.get_account(ata)
            balance = 0
            if existing is not None:
                balance = TokenAccount.from_bytes(bytes(existing.data)[:165]).amount
            # solders token state objects are immutable: build new ones.
            token_account = TokenAccount(
                mint, owner, balance + amount, None, TokenAccountState.Initialized, None, 0
            )
            mint_state = Mint(
                mint_state.mint_authority,
                mint_state.supply + amount,
                mint_state.decimals,
                True,
                mint_state.freeze_authority,
            )
            ata_data = bytes(token_account)
            ata_account = Account(
                self.svm.minimum_balance_for_rent_exemption(len(ata_data))
                if existing is None
                else existing.lamports,
                ata_data,
                TOKEN_PROGRAM_ID,
                False,
                0,
            )
            new_mint_account = Account(mint_account.lamports, bytes(mint_state), TOKEN_PROGRAM_ID, False, 0)
            self.svm.set_account(ata, ata_account)
            self.svm.set_account(mint, new_mint_account)
            self.store.commit(accounts=[(ata, ata_account), (mint, new_mint_account)])
        return ata

    def advance_blocks(self, blocks: int) -> dict[str, int]:
        if blocks < 0:
            raise RpcError(INVALID_PARAMS, "Invalid params: blocks must not be negative")
        with self._lock:
            self._tick()
            self._advance(blocks)
            self.store.commit(meta=self._height_meta())
            return {"blockHeight": self.block_height, "slot": self.slot}

    def expire_blockhash(self) -> dict[str, int]:
        """Every blockhash handed out so far becomes invalid (151 blocks pass)."""
        return self.advance_blocks(MAX_PROCESSING_AGE + 1)

    def close(self) -> None:
        with self._lock:
            self.store.commit(meta=self._height_meta())
            self.store.close()


def _persistable(account: Account | None) -> bool:
    if account is None:
        return True  # closed account: delete it from the store
    return not account.executable and account.owner not in _NOT_PERSISTED_OWNERS


def _simulation_value(
    err: Any,
    *,
    logs: list[str] | None = None,
    units: int = 0,
    addresses: Sequence[Pubkey] | None = None,
    replacement: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "err": err,
        "logs": logs or [],
        "accounts": None if addresses is None else [None] * len(addresses),
        "unitsConsumed": units,
        "returnData": None,
        "innerInstructions": None,
        "replacementBlockhash": replacement,
    }


def _return_data_json(meta: TransactionMetadata) -> dict[str, Any] | None:
    return_data = meta.return_data()
    data = bytes(return_data.data)
    if not data:
        return None
    return {
        "programId": str(return_data.program_id),
        "data": [base64.b64encode(data).decode(), "base64"],
    }


def _inner_instructions_json(meta: TransactionMetadata) -> list[dict[str, Any]]:
    out = []
    for index, inner in enumerate(meta.inner_instructions()):
        if not inner:
            continue
        out.append(
            {
                "index": index,
                "instructions": [
                    {
                        "programIdIndex": compiled.program_id_index,
                        "accounts": list(compiled.accounts),
                        "data": b58encode(bytes(compiled.data)),
                        "stackHeight": item.stack_height(),
                    }
                    for item in inner
                    for compiled in (item.instruction(),)
                ],
            }
        )
    return out


def _transaction_json(tx: VersionedTransaction) -> dict[str, Any]:
    message = tx.message
    header = message.header
    message_json: dict[str, Any] = {
        "header": {
            "numRequiredSignatures": header.num_required_signatures,
            "numReadonlySignedAccounts": header.num_readonly_signed_accounts,
            "numReadonlyUnsignedAccounts": header.num_readonly_unsigned_accounts,
        },
        "accountKeys": [str(k) for k in message.account_keys],
        "recentBlockhash": str(message.recent_blockhash),
        "instructions": [
            {
                "programIdIndex": ix.program_id_index,
                "accounts": list(ix.accounts),
                "data": b58encode(bytes(ix.data)),
                "stackHeight": None,
            }
            for ix in message.instructions
        ],
    }
    if isinstance(message, MessageV0):
        message_json["addressTableLookups"] = [
            {
                "accountKey": str(lookup.account_key),
                "writableIndexes": list(lookup.writable_indexes),
                "readonlyIndexes": list(lookup.readonly_indexes),
            }
            for lookup in message.address_table_lookups
        ]
    return {"signatures": [str(s) for s in tx.signatures], "message": message_json}


def message_from_base64(payload: str) -> Message | MessageV0:
    try:
        message = from_bytes_versioned(base64.b64decode(payload, validate=True))
    except Exception as exc:
        raise RpcError(INVALID_PARAMS, f"invalid message: {exc}") from None
    if not isinstance(message, (Message, MessageV0)):
        raise RpcError(INVALID_PARAMS, "invalid message: unsupported message version")
    return message


__all__ = [
    "MAX_PROCESSING_AGE",
    "RpcError",
    "SandboxChain",
    "b58decode",
    "b58encode",
    "compute_fee",
    "decode_transaction",
    "error_to_json",
    "message_from_base64",
    "ui_account",
]
