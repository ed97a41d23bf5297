"""`SolanaBackend`: the one interface services use to read and write the Solana chain.

Synchronous and thread-safe. Requests are solana-py's own (the `AsyncClient`'s request
builders, with its commitment defaults), answers are parsed by solders, and both go
through `RpcTransport`: kept-alive HTTP connections shared by the process's threads. The
`AsyncClient`'s own I/O (httpx on an event-loop thread) cost the caller 0.5 ms of CPU per
call, eight times the transport's (see `execution.solana.transport`). The same class talks
to a real RPC node (live mode) and to the sandbox server (sandbox mode): only the URL
differs.

Errors are a small hierarchy (`execution.solana.errors`):

* `SolanaUnavailable`: no answer (connection refused/reset, timeout, HTTP 5xx/429, node
  unhealthy). For `send_raw` this means the outcome is UNKNOWN: the transaction may have
  been executed. Look the signature up before doing anything else.
* `SolanaRpcError`: the node answered with an error (`code`, `message`, `data`,
  `tx_error` for preflight failures), or with something that is not a JSON-RPC answer.
  Subclasses `BlockhashNotFound` and `AlreadyProcessed` come from preflight (only when
  `skip_preflight=False`).

Reads are asked once more when the node does not answer; sends never are.

Transaction errors are returned as the RPC's JSON value (`TxError`):
``None`` on success, else e.g. ``"BlockhashNotFound"`` or
``{"InstructionError": [0, {"Custom": 1}]}``: plain data, safe to store in a JSONField.

Calls block: from inside a running event loop (async consumers) wrap them with
`asgiref.sync.sync_to_async`. The backend is fork-safe: a child process that inherits it
opens its own connections.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Commitment, Confirmed
from solana.rpc.core import RPCException
from solana.rpc.models import TxOpts
from solders.account import Account
from solders.hash import Hash
from solders.message import Message, MessageV0
from solders.pubkey import Pubkey
from solders.rpc import errors as rpc_errors
from solders.rpc.errors import RpcCustomErrorFieldless
from solders.rpc.responses import (
    GetAccountInfoResp,
    GetBalanceResp,
    GetBlockHeightResp,
    GetFeeForMessageResp,
    GetLatestBlockhashResp,
    GetMinimumBalanceForRentExemptionResp,
    GetMultipleAccountsResp,
    GetSignatureStatusesResp,
    GetSlotResp,
    GetTokenAccountBalanceResp,
    GetTransactionResp,
    RequestAirdropResp,
    RPCError,
    SendTransactionResp,
    SimulateTransactionResp,
)
from solders.signature import Signature
from solders.transaction import VersionedTransaction

from execution.solana.errors import (
    AlreadyProcessed,
    BlockhashNotFound,
    SolanaError,
    SolanaRpcError,
    SolanaUnavailable,
    TxError,
)
from execution.solana.transport import rpc_transport

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0


# -- errors ---------------------------------------------------------------------------------

_ERROR_CODES: dict[type, int] = {
    rpc_errors.BlockCleanedUpMessage: -32001,
    rpc_errors.SendTransactionPreflightFailureMessage: -32002,
    rpc_errors.BlockNotAvailableMessage: -32004,
    rpc_errors.NodeUnhealthyMessage: -32005,
    rpc_errors.TransactionPrecompileVerificationFailureMessage: -32006,
    rpc_errors.SlotSkippedMessage: -32007,
    rpc_errors.LongTermStorageSlotSkippedMessage: -32009,
    rpc_errors.KeyExcludedFromSecondaryIndexMessage: -32010,
    rpc_errors.ScanErrorMessage: -32012,
    rpc_errors.BlockStatusNotAvailableYetMessage: -32014,
    rpc_errors.UnsupportedTransactionVersionMessage: -32015,
    rpc_errors.MinContextSlotNotReachedMessage: -32016,
    rpc_errors.ParseErrorMessage: -32700,
    rpc_errors.InvalidRequestMessage: -32600,
    rpc_errors.MethodNotFoundMessage: -32601,
    rpc_errors.InvalidParamsMessage: -32602,
    rpc_errors.InternalErrorMessage: -32603,
}
# solders' fieldless custom errors are unhashable enums: look them up by equality.
_FIELDLESS_CODES = [
    (RpcCustomErrorFieldless.TransactionSignatureVerificationFailure, -32003),
    (RpcCustomErrorFieldless.NoSnapshot, -32008),
    (RpcCustomErrorFieldless.TransactionHistoryNotAvailable, -32011),
    (RpcCustomErrorFieldless.TransactionSignatureLenMismatch, -32013),
]


def _json_field(obj: Any, name: str) -> Any:
    """A field of a solders object in its RPC JSON form (how errors become plain data)."""
    return json.loads(obj.to_json()).get(name)


def _from_rpc_exception(exc: RPCException) -> SolanaError:
    parsed = exc.args[0] if exc.args else None
    if isinstance(parsed, RpcCustomErrorFieldless):
        code = next((c for value, c in _FIELDLESS_CODES if value == parsed), None)
        return SolanaRpcError(str(parsed), code=code)
    message = getattr(parsed, "message", str(parsed))
    code = _ERROR_CODES.get(type(parsed))
    if isinstance(parsed, rpc_errors.NodeUnhealthyMessage):
        return SolanaUnavailable(message)
    if isinstance(parsed, rpc_errors.SendTransactionPreflightFailureMessage):
        data = json.loads(parsed.to_json()).get("data") or {}
        tx_error = data.get("err")
        cls: type[SolanaRpcError] = SolanaRpcError
        if tx_error == "BlockhashNotFound":
            cls = BlockhashNotFound
        elif tx_error == "AlreadyProcessed":
            cls = AlreadyProcessed
        return cls(message, code=code, data=data, tx_error=tx_error)
    data = getattr(parsed, "data", None)
    return SolanaRpcError(message, code=code, data=data)


RPC_ERRORS = RPCError.__args__  # type: ignore[attr-defined]  # the parsed error classes


def _parse(raw: bytes | str, parser: Any) -> Any:
    """One JSON-RPC answer, parsed by solders as solana-py parses it: the response, or
    the error it carries raised as ours."""
    try:
        parsed = parser.from_json(raw if isinstance(raw, str) else raw.decode())
    except Exception as exc:  # the node answered something that is not this answer
        raise SolanaRpcError(f"unexpected RPC answer: {type(exc).__name__}: {exc}") from None
    if isinstance(parsed, RPC_ERRORS):
        raise _from_rpc_exception(RPCException(parsed))
    return parsed




# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimulationResult:
    err: TxError
    logs: list[str]
    units_consumed: int
    # Requested accounts after the simulated transaction (None = does not exist).
    # Empty when the simulation failed: a node returns no accounts then.
    post_accounts: dict[Pubkey, Account | None]
    replacement_blockhash: tuple[Hash, int] | None = None

    @property
    def succeeded(self) -> bool:
        return self.err is None


@dataclass(frozen=True, slots=True)
class SignatureState:
    """Status of a landed transaction (a signature with no status is returned as None)."""

    slot: int
    err: TxError
    confirmation_status: str | None  # "processed" | "confirmed" | "finalized"
    confirmations: int | None = None

    @property
    def found(self) -> bool:
        return True

    @property
    def succeeded(self) -> bool:
        return self.err is None

    @property
    def is_finalized(self) -> bool:
        return self.confirmation_status == "finalized"


@dataclass(frozen=True, slots=True)
class TokenBalance:
    account_index: int
    account: Pubkey
    mint: Pubkey
    owner: Pubkey | None
    amount: int
    decimals: int


@dataclass(frozen=True, slots=True)
class TransactionDetails:
    slot: int
    block_time: int | None
    fee: int
    err: TxError
    compute_units_consumed: int | None
    account_keys: list[Pubkey]  # static keys, then loaded writable, then loaded readonly
    pre_balances: list[int]
    post_balances: list[int]
    pre_token_balances: list[TokenBalance] = field(default_factory=list)
    post_token_balances: list[TokenBalance] = field(default_factory=list)
    log_messages: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.err is None

    def lamport_delta(self, pubkey: Pubkey) -> int:
        """post - pre lamports of an account (fee included for the fee payer)."""
        delta = 0
        for index, key in enumerate(self.account_keys):
            if key == pubkey:
                return self.post_balances[index] - self.pre_balances[index]
        return delta

    def token_delta(self, token_account: Pubkey) -> int:
        """post - pre raw token amount of a token account (0 if not involved)."""
        pre = {b.account: b.amount for b in self.pre_token_balances}
        post = {b.account: b.amount for b in self.post_token_balances}
        return post.get(token_account, 0) - pre.get(token_account, 0)


# -- the backend ----------------------------------------------------------------------------


class SolanaBackend:
    """Thread-safe; create one per process and reuse it."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        commitment: Commitment = Confirmed,
        read_retries: int = 1,
    ) -> None:
        if read_retries not in (0, 1):
            raise ValueError("a read is asked at most twice")
        self.url = url
        self.timeout = timeout
        self.commitment = commitment
        self.read_retries = read_retries
        # Only its request builders are used (no I/O): solana-py's requests and defaults.
        self._requests = AsyncClient(url, commitment=commitment, timeout=timeout)
        self._transport = rpc_transport(url, timeout)

    @classmethod
    def from_url(
        cls, url: str, *, timeout: float = DEFAULT_TIMEOUT, commitment: Commitment = Confirmed
    ) -> SolanaBackend:
        return cls(url, timeout=timeout, commitment=commitment)

    def __repr__(self) -> str:
        return f"SolanaBackend({self.url!r})"

    # -- plumbing ------------------------------------------------------------------------

    def _call(self, request: Any, parser: Any, *, read: bool = True) -> Any:
        """One request, its answer parsed. A read is asked once more when the node does not
        answer (the transport's retry) or answers that it is unhealthy; a write never is."""
        body = request.to_json().encode()
        if not (read and self.read_retries):
            return _parse(self._transport.post(body, retry=False), parser)
        raw = self._transport.post(body, retry=True)
        try:
            return _parse(raw, parser)
        except SolanaUnavailable:  # "node unhealthy": it may be back already
            return _parse(self._transport.post(body, retry=False), parser)

    def close(self) -> None:
        """Close the idle connections (the next call opens new ones)."""
        self._transport.close()

    def __enter__(self) -> SolanaBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reads ---------------------------------------------------------------------------

    def latest_blockhash(self) -> tuple[Hash, int]:
        """(blockhash, lastValidBlockHeight): the tx can land while block_height() <= it."""
        resp = self._call(self._requests._get_latest_blockhash_body(None), GetLatestBlockhashResp)
        return resp.value.blockhash, resp.value.last_valid_block_height

    def block_height(self) -> int:
        return int(self._call(self._requests._get_block_height_body(None), GetBlockHeightResp).value)

    def slot(self) -> int:
        return int(self._call(self._requests._get_slot_body(None), GetSlotResp).value)

    def balance(self, pubkey: Pubkey) -> int:
        """Lamports (0 for an account that does not exist)."""
        return int(self._call(self._requests._get_balance_body(pubkey, None), GetBalanceResp).value)

    def account(self, pubkey: Pubkey) -> Account | None:
        request = self._requests._get_account_info_body(
            pubkey=pubkey, commitment=None, encoding="base64", data_slice=None)
        return _account_from_ui(self._call(request, GetAccountInfoResp).value)

    def accounts(self, pubkeys: Sequence[Pubkey]) -> dict[Pubkey, Account | None]:
        keys = list(pubkeys)
        out: dict[Pubkey, Account | None] = {}
        for start in range(0, len(keys), 100):
            chunk = keys[start : start + 100]
            request = self._requests._get_multiple_accounts_body(
                pubkeys=chunk, commitment=None, encoding="base64", data_slice=None)
            resp = self._call(request, GetMultipleAccountsResp)
            out.update(zip(chunk, map(_account_from_ui, resp.value), strict=True))
        return out

    def token_balance(self, token_account: Pubkey) -> int:
        """Raw token amount (smallest unit) of an SPL token account; 0 if it does not exist."""
        try:
            resp = self._call(self._requests._get_token_account_balance_body(token_account, None),
                              GetTokenAccountBalanceResp)
        except SolanaRpcError as exc:
            if exc.code == -32602 and "could not find account" in exc.message:
                return 0
            raise
        return int(resp.value.amount)

    def minimum_rent(self, size: int) -> int:
        """Lamports that make an account of `size` data bytes rent-exempt."""
        return int(self._call(self._requests._get_minimum_balance_for_rent_exemption_body(size, None),
                              GetMinimumBalanceForRentExemptionResp).value)

    def fee_for_message(self, message: Message | MessageV0) -> int | None:
        """Fee the node would charge (signatures + priority fee); None if blockhash expired."""
        resp = self._call(self._requests._get_fee_for_message_body(message, None),  # type: ignore[arg-type]
                          GetFeeForMessageResp)
        return None if resp.value is None else int(resp.value)

    def simulate(
        self,
        tx: VersionedTransaction,
        accounts: Sequence[Pubkey] = (),
        *,
        sig_verify: bool = False,
        replace_recent_blockhash: bool = False,
    ) -> SimulationResult:
        addresses = list(accounts)
        request = self._requests._simulate_transaction_body(
            tx, sig_verify, None, replace_recent_blockhash, None, False, addresses or None,
            "base64")
        return _simulation_result(self._call(request, SimulateTransactionResp), addresses)

    def _batch(self, requests: Sequence[Any], parsers: Sequence[Any]) -> list[Any]:
        """Several requests in ONE JSON-RPC batch (one HTTP round trip). Each item of the
        answer is the response or the SolanaError that request got; no answer at all
        raises (never asked again: a batch may hold sends)."""
        if not requests:
            return []
        calls = []
        for number, request in enumerate(requests):
            call = json.loads(request.to_json())
            call["id"] = number
            calls.append(call)
        body = json.dumps(calls, separators=(",", ":")).encode()
        raw = self._transport.post(body, retry=False)
        try:
            answers = json.loads(raw)
        except ValueError:
            raise SolanaRpcError("unexpected RPC answer: not JSON") from None
        if not isinstance(answers, list):  # the node refused the batch as a whole
            raise SolanaRpcError(f"RPC batch refused: {raw[:200]!r}")
        by_id = {answer.get("id"): answer for answer in answers if isinstance(answer, dict)}
        out: list[Any] = []
        for number, parser in enumerate(parsers):
            answer = by_id.get(number)
            if answer is None:
                out.append(SolanaRpcError(f"no answer to batch item {number}"))
                continue
            try:
                out.append(_parse(json.dumps(answer), parser))
            except SolanaError as exc:
                out.append(exc)
        return out

    def simulate_many(self, requests: Sequence[tuple[VersionedTransaction, Sequence[Pubkey]]]
                      ) -> list[SimulationResult | SolanaError]:
        """`simulate` of several transactions in one batch (no retries: a caller that gets
        an error for one simply asks again for that one)."""
        bodies = [self._requests._simulate_transaction_body(tx, False, None, False, None, False,
                                                            list(keys) or None, "base64")
                  for tx, keys in requests]
        results = self._batch(bodies, [SimulateTransactionResp] * len(bodies))
        return [r if isinstance(r, SolanaError) else _simulation_result(r, list(keys))
                for r, (_, keys) in zip(results, requests, strict=True)]

    def send_raw_many(self, raws: Sequence[bytes]) -> list[Signature | SolanaError]:
        """`send_raw` of several transactions in one batch. An error for one (or for the
        whole batch) means it may or may not have been executed: only its signature status
        can tell."""
        bodies = [self._requests._send_raw_transaction_body(raw, self._send_options())
                  for raw in raws]
        results = self._batch(bodies, [SendTransactionResp] * len(bodies))
        return [r if isinstance(r, SolanaError) else r.value for r in results]

    def transactions(self, signatures: Sequence[Signature]
                     ) -> list[TransactionDetails | None | SolanaError]:
        """`transaction` for several signatures in one batch."""
        bodies = [self._requests._get_transaction_body(sig, "json", None, 0) for sig in signatures]
        results = self._batch(bodies, [GetTransactionResp] * len(bodies))
        return [r if isinstance(r, SolanaError) else
                (None if r.value is None else _transaction_details(r.value)) for r in results]

    def signature_statuses(self, signatures: Sequence[Signature]) -> list[SignatureState | None]:
        """Statuses searched in the whole history (not only the recent status cache)."""
        sigs = list(signatures)
        out: list[SignatureState | None] = []
        for start in range(0, len(sigs), 256):
            chunk = sigs[start : start + 256]
            resp = self._call(self._requests._get_signature_statuses_body(chunk, True),
                              GetSignatureStatusesResp)
            for status in resp.value:
                if status is None:
                    out.append(None)
                    continue
                raw = json.loads(status.to_json())
                out.append(
                    SignatureState(
                        slot=int(raw["slot"]),
                        err=raw.get("err"),
                        confirmation_status=raw.get("confirmationStatus"),
                        confirmations=raw.get("confirmations"),
                    )
                )
        return out

    def signature_status(self, signature: Signature) -> SignatureState | None:
        return self.signature_statuses([signature])[0]

    def transaction(self, signature: Signature) -> TransactionDetails | None:
        resp = self._call(self._requests._get_transaction_body(signature, "json", None, 0),
                          GetTransactionResp)
        if resp.value is None:
            return None
        return _transaction_details(resp.value)

    # -- writes --------------------------------------------------------------------------

    def send_raw(self, raw: bytes, *, skip_preflight: bool = True) -> Signature:
        """Hand signed wire bytes to the node once (max_retries=0, no confirmation wait).

        With skip_preflight (the default) a node answers with the signature even if the
        transaction can never land; only getSignatureStatuses tells. SolanaUnavailable
        here means the transaction may or may not have been executed.
        """
        request = self._requests._send_raw_transaction_body(
            raw, self._send_options(skip_preflight=skip_preflight))
        signature = self._call(request, SendTransactionResp, read=False).value
        if not signature:  # what solana-py's send checks too
            raise SolanaRpcError("Failed to send transaction")
        return signature

    def request_airdrop(self, pubkey: Pubkey, lamports: int) -> Signature:
        """requestAirdrop (sandbox faucet, devnet/testnet faucets)."""
        return self._call(self._requests._request_airdrop_body(pubkey, lamports, None),
                          RequestAirdropResp, read=False).value

    def _send_options(self, *, skip_preflight: bool = True) -> Any:
        return TxOpts(skip_preflight=skip_preflight, skip_confirmation=True,
                      preflight_commitment=self.commitment, max_retries=0)


def _simulation_result(resp: Any, addresses: list[Pubkey]) -> SimulationResult:
    value = resp.value
    err = _json_field(value, "err")
    post: dict[Pubkey, Account | None] = {}
    if err is None and value.accounts is not None:
        for pubkey, ui_account in zip(addresses, value.accounts, strict=True):
            post[pubkey] = _account_from_ui(ui_account)
    replacement = None
    if value.replacement_blockhash is not None:
        replacement = (
            Hash.from_string(str(value.replacement_blockhash.blockhash)),
            int(value.replacement_blockhash.last_valid_block_height),
        )
    return SimulationResult(
        err=err,
        logs=list(value.logs or []),
        units_consumed=int(value.units_consumed or 0),
        post_accounts=post,
        replacement_blockhash=replacement,
    )


def _account_from_ui(ui_account: Any) -> Account | None:
    """solana-py already decodes base64 accounts into solders `Account`s."""
    if ui_account is None or isinstance(ui_account, Account):
        return ui_account
    raise SolanaRpcError(f"unexpected account encoding in RPC answer: {ui_account!r}")


def _token_balances(balances: Any, keys: list[Pubkey]) -> list[TokenBalance]:
    out = []
    for balance in balances or []:
        index = int(balance.account_index)
        owner = balance.owner
        out.append(
            TokenBalance(
                account_index=index,
                account=keys[index],
                mint=Pubkey.from_string(str(balance.mint)),
                owner=None if owner is None else Pubkey.from_string(str(owner)),
                amount=int(balance.ui_token_amount.amount),
                decimals=int(balance.ui_token_amount.decimals),
            )
        )
    return out


def _transaction_details(value: Any) -> TransactionDetails:
    meta = value.transaction.meta
    message = value.transaction.transaction.message
    keys = [Pubkey.from_string(str(k)) for k in message.account_keys]
    loaded = meta.loaded_addresses
    if loaded is not None:
        keys += [Pubkey.from_string(str(k)) for k in loaded.writable]
        keys += [Pubkey.from_string(str(k)) for k in loaded.readonly]
    return TransactionDetails(
        slot=int(value.slot),
        block_time=None if value.block_time is None else int(value.block_time),
        fee=int(meta.fee),
        err=_json_field(meta, "err"),
        compute_units_consumed=(
            None if meta.compute_units_consumed is None else int(meta.compute_units_consumed)
        ),
        account_keys=keys,
        pre_balances=[int(b) for b in meta.pre_balances],
        post_balances=[int(b) for b in meta.post_balances],
        pre_token_balances=_token_balances(meta.pre_token_balances, keys),
        post_token_balances=_token_balances(meta.post_token_balances, keys),
        log_messages=list(meta.log_messages or []),
    )


__all__ = [
    "AlreadyProcessed",
    "BlockhashNotFound",
    "SignatureState",
    "SimulationResult",
    "SolanaBackend",
    "SolanaError",
    "SolanaRpcError",
    "SolanaUnavailable",
    "TokenBalance",
    "TransactionDetails",
    "TxError",
]
