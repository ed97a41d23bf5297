"""What a piece of Solana work costs the treasury, found by simulating it.

`work_cost()` builds the transaction exactly as the executor will
(`solana_tx.build_execution_message`, placeholder memo of the same length), reads the
treasury's account and every writable account of the work (pre-state, one
getMultipleAccounts), simulates it with those accounts returned (post-state, one
simulateTransaction with replaceRecentBlockhash), and reports:

* fee = 5000 × 1 signature + ceil(CU limit × price / 10^6), what the runtime charges;
* SOL outflow = treasury pre − post − fee (rent of accounts it creates is inside);
* token outflow per mint = pre − post of every token account the treasury owns.

Pre-state and simulation are two JSON-RPC calls sent as ONE batch (`_ChainReader`: one
HTTP round trip on a kept-alive connection of the shared `RpcTransport`, read as plain
JSON: mapping them to SDK objects was a noticeable share of a quote's CPU). The node
answers them in order, so a transaction landing between them
is seen as part of this work. Only the treasury spends from its accounts, so such a race can
only make a quote too high (never too low), and the executor re-simulates against
`max_lamports_spend` before sending anyway.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from solders.hash import Hash
from solders.instruction import Instruction
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.token.state import TokenAccount
from solders.transaction import VersionedTransaction

from config.errors import Unavailable
from execution.solana.backend import SolanaBackend, SolanaError, SolanaUnavailable
from execution.solana.signer import KeypairSigner
from execution.solana.transport import rpc_transport
from quotes.errors import InvalidQuoteParameters
from quotes.solana_tx import (
    QUOTE_MEMO_PLACEHOLDER,
    SYSTEM_PROGRAM,
    TOKEN_PROGRAMS,
    build_execution_message,
    execution_fee_lamports,
    execution_memo,
)
from risk.errors import InsufficientTreasury

TOKEN_ACCOUNT_SIZE = 165
# getMultipleAccounts answers at most 100 accounts (the treasury is one of them).
MAX_WATCHED_ACCOUNTS = 100
# Instructions the executor puts before the client's (SetComputeUnitLimit, SetComputeUnitPrice).
_PREPENDED_INSTRUCTIONS = 2
# System: ResultWithNegativeLamports; SPL Token: InsufficientFunds. Both are custom error 1.
_INSUFFICIENT_FUNDS_ERROR = 1


class ChainUnavailable(Unavailable):
    code = "CHAIN_UNAVAILABLE"
    default_message = "The Solana node is not answering; try again shortly"


def get_backend() -> SolanaBackend:
    """The process's `SolanaBackend` for `SOLANA_RPC_URL` (the executor's, shared)."""
    from execution.services.chain import solana_backend

    return solana_backend()


@functools.lru_cache(maxsize=4)
def _treasury_pubkey(setting: str) -> Pubkey:
    return KeypairSigner.from_setting(setting).pubkey


def treasury_pubkey() -> Pubkey:
    """The treasury's Solana address (fee payer and only signer of every execution)."""
    return _treasury_pubkey(settings.SOLANA_TREASURY_KEY)


@dataclass(frozen=True, slots=True)
class WorkCost:
    fee_lamports: int
    treasury_outflow_lamports: int
    token_outflows: dict[str, int]  # mint → base units leaving treasury token accounts
    treasury_lamports: int  # the treasury's live balance before the work
    treasury_token_balances: dict[str, int] = field(default_factory=dict)  # mint → before
    units_consumed: int = 0

    @property
    def max_lamports_spend(self) -> int:
        return self.treasury_outflow_lamports + self.fee_lamports


def _token_state(account: _AccountState | None) -> TokenAccount | None:
    if (account is None or account.owner not in TOKEN_PROGRAMS
            or len(account.data) < TOKEN_ACCOUNT_SIZE):
        return None
    try:
        # Token-2022 accounts carry extensions after the 165-byte base layout.
        return TokenAccount.from_bytes(bytes(account.data[:TOKEN_ACCOUNT_SIZE]))
    except Exception:
        return None


def _simulation_refusal(err: Any, logs: list[str], instructions: list[Instruction],
                        treasury: Pubkey) -> Exception:
    """Map a failed simulation to what the client should be told."""
    if err in ("InsufficientFundsForFee", "AccountNotFound"):
        return InsufficientTreasury(details={"simulation_error": err})
    if isinstance(err, dict) and "InsufficientFundsForRent" in err:
        index = (err["InsufficientFundsForRent"] or {}).get("account_index")
        if index == 0:  # account 0 is the fee payer: the treasury
            return InsufficientTreasury(details={"simulation_error": err})
    details: dict[str, Any] = {"simulation_error": err, "logs": logs[-10:]}
    if isinstance(err, dict) and "InstructionError" in err:
        position, reason = err["InstructionError"]
        client_index = position - _PREPENDED_INSTRUCTIONS
        details["instruction"] = client_index
        if 0 <= client_index < len(instructions) and reason == {"Custom": _INSUFFICIENT_FUNDS_ERROR}:
            program = str(instructions[client_index].program_id)
            treasury_is_source = any(meta.pubkey == treasury and meta.is_signer
                                     for meta in instructions[client_index].accounts)
            if treasury_is_source and (program == SYSTEM_PROGRAM or program in TOKEN_PROGRAMS):
                return InsufficientTreasury(details=details)
    return InvalidQuoteParameters("The transaction fails in simulation", details=details)


@dataclass(frozen=True, slots=True)
class _AccountState:
    lamports: int
    owner: str  # the owning program, base58 as the node sent it (compared as text)
    data: bytes


@dataclass(frozen=True, slots=True)
class _Simulation:
    err: Any  # the RPC's TransactionError JSON; None on success
    logs: list[str]
    units_consumed: int
    post_accounts: dict[Pubkey, _AccountState | None]

    @property
    def succeeded(self) -> bool:
        return self.err is None


class _ChainReader:
    """getMultipleAccounts + simulateTransaction as one JSON-RPC batch, posted through the
    process's `RpcTransport` (kept-alive connections) and read as plain JSON. Asked again
    once when the node does not answer (both are reads), as `SolanaBackend` asks its reads
    again; raises SolanaUnavailable / SolanaError alike."""

    COMMITMENT = "confirmed"  # SolanaBackend's default commitment

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        self._transport = rpc_transport(url, timeout)

    def _post(self, body: bytes) -> Any:
        try:
            return json.loads(self._transport.post(body, retry=True))
        except ValueError:
            raise SolanaError("unexpected RPC answer: not JSON") from None

    def accounts_and_simulation(self, tx: VersionedTransaction, watched: list[Pubkey]
                                ) -> tuple[dict[Pubkey, _AccountState | None], _Simulation]:
        answers = self._post(_batch_body(tx, watched))
        if not isinstance(answers, list):
            raise SolanaError(f"RPC batch refused: {str(answers)[:200]}")
        by_id = {answer.get("id"): answer for answer in answers if isinstance(answer, dict)}
        results = []
        for request_id in (0, 1):
            answer = by_id.get(request_id) or {}
            error = answer.get("error")
            if error is not None:
                if isinstance(error, dict) and error.get("code") == NODE_UNHEALTHY:
                    raise SolanaUnavailable(str(error.get("message")))
                raise SolanaError(f"RPC error: {str(error)[:200]}")
            if "result" not in answer:
                raise SolanaError("unexpected RPC answer: no result")
            results.append(answer["result"]["value"])
        before = dict(zip(watched, map(_account_state, results[0]), strict=True))
        value = results[1]
        err = value.get("err")
        post: dict[Pubkey, _AccountState | None] = {}
        if err is None and value.get("accounts") is not None:
            post = dict(zip(watched, map(_account_state, value["accounts"]), strict=True))
        return before, _Simulation(err=err, logs=list(value.get("logs") or []),
                                   units_consumed=int(value.get("unitsConsumed") or 0),
                                   post_accounts=post)


NODE_UNHEALTHY = -32005

# The batch's JSON around its only variable parts, the addresses and the transaction:
#   [{"jsonrpc":"2.0","id":0,"method":"getMultipleAccounts",
#     "params":[ADDRESSES,{"encoding":"base64","commitment":"confirmed"}]},
#    {"jsonrpc":"2.0","id":1,"method":"simulateTransaction",
#     "params":["TX",{"encoding":"base64","sigVerify":false,"replaceRecentBlockhash":true,
#                     "commitment":"confirmed",
#                     "accounts":{"addresses":ADDRESSES,"encoding":"base64"}}]}]
# Both are base58 and base64 text, which JSON carries as is (no character to escape), so
# the body is joined from fixed fragments: json.dumps of this small batch was ~100,000
# instructions, 1.5% of a quote. tests/quotes/test_quotes_chain_reader.py holds it to
# json.loads' reading of the same structure.
_BATCH_HEAD = (b'[{"jsonrpc":"2.0","id":0,"method":"getMultipleAccounts","params":[')
_BATCH_MIDDLE = (b',{"encoding":"base64","commitment":"' + _ChainReader.COMMITMENT.encode()
                 + b'"}]},{"jsonrpc":"2.0","id":1,"method":"simulateTransaction","params":["')
_BATCH_OPTIONS = (b'",{"encoding":"base64","sigVerify":false,"replaceRecentBlockhash":true,'
                  b'"commitment":"' + _ChainReader.COMMITMENT.encode()
                  + b'","accounts":{"addresses":')
_BATCH_TAIL = b',"encoding":"base64"}}]}]'


def _batch_body(tx: VersionedTransaction, watched: list[Pubkey]) -> bytes:
    """The getMultipleAccounts + simulateTransaction batch for `tx`, watching `watched`."""
    addresses = ('["' + '","'.join([str(pubkey) for pubkey in watched]) + '"]').encode()
    return b"".join((_BATCH_HEAD, addresses, _BATCH_MIDDLE, base64.b64encode(bytes(tx)),
                     _BATCH_OPTIONS, addresses, _BATCH_TAIL))


def _account_state(account: Any) -> _AccountState | None:
    if account is None:
        return None
    data, encoding = account["data"]
    if encoding != "base64":
        raise SolanaError(f"unexpected account encoding in RPC answer: {encoding!r}")
    # base64.b64decode's own step, without its wrapper's type checks (data is text here).
    return _AccountState(lamports=int(account["lamports"]), owner=account["owner"],
                         data=binascii.a2b_base64(data))


@functools.lru_cache(maxsize=4)
def _reader_for(url: str, timeout: float) -> _ChainReader:
    return _ChainReader(url, timeout)


def _chain_reader() -> _ChainReader:
    """One reader per process for `SOLANA_RPC_URL` (a new one if the setting moves)."""
    return _reader_for(settings.SOLANA_RPC_URL, float(settings.SOLANA_RPC_TIMEOUT_SECONDS))


def work_cost(instructions: list[Instruction], *, cu_limit: int, cu_price: int) -> WorkCost:
    """Simulate the work as the executor will send it and measure what it costs the treasury."""
    treasury = treasury_pubkey()
    message = build_execution_message(instructions, cu_limit, cu_price,
                                      execution_memo(QUOTE_MEMO_PLACEHOLDER), treasury,
                                      Hash.default())
    watched = [treasury]
    for ix in instructions:
        for meta in ix.accounts:
            if meta.is_writable and meta.pubkey not in watched:
                watched.append(meta.pubkey)
    # The node replaces the blockhash and skips signature checks: no signature is needed.
    tx = VersionedTransaction.populate(message, [Signature.default()])
    if len(watched) > MAX_WATCHED_ACCOUNTS:
        raise InvalidQuoteParameters("The transaction writes to too many accounts",
                                     details={"writable_accounts": len(watched),
                                              "max": MAX_WATCHED_ACCOUNTS})
    try:
        before, result = _chain_reader().accounts_and_simulation(tx, watched)
    except SolanaUnavailable:
        raise ChainUnavailable() from None
    except SolanaError as exc:
        raise InvalidQuoteParameters("The Solana node refused to simulate the transaction",
                                     details={"reason": str(exc)[:200]}) from None
    if not result.succeeded:
        raise _simulation_refusal(result.err, result.logs, instructions, treasury)
    if result.units_consumed > cu_limit:
        raise InvalidQuoteParameters("The transaction needs more compute units than requested",
                                     details={"units_consumed": result.units_consumed,
                                              "estimated_compute_units": cu_limit})
    fee = execution_fee_lamports(cu_limit, cu_price)
    # The outflow is measured on the receiving side: only the treasury signs, so every
    # lamport or token the work moves out of it lands in one of the other writable
    # accounts (or is the fee). The treasury's own balance keeps changing as other
    # executions land between our read and the simulation, so measuring its delta would
    # price someone else's transfer into this quote; the receivers are untouched by them.
    pre_treasury = before.get(treasury)
    pre_lamports = pre_treasury.lamports if pre_treasury else 0
    outflow = 0
    token_outflows: dict[str, int] = {}
    token_balances: dict[str, int] = {}
    for pubkey in watched[1:]:
        pre_account, post_account = before.get(pubkey), result.post_accounts.get(pubkey)
        outflow += ((post_account.lamports if post_account else 0)
                    - (pre_account.lamports if pre_account else 0))
        pre_state, post_state = _token_state(pre_account), _token_state(post_account)
        if pre_state is not None and pre_state.owner == treasury:
            mint = str(pre_state.mint)
            token_balances[mint] = token_balances.get(mint, 0) + pre_state.amount
            continue
        if post_state is None or post_state.owner == treasury:
            continue
        received = post_state.amount - (pre_state.amount if pre_state is not None else 0)
        if received > 0:
            mint = str(post_state.mint)
            token_outflows[mint] = token_outflows.get(mint, 0) + received
    outflow = max(0, outflow)
    return WorkCost(fee_lamports=fee, treasury_outflow_lamports=outflow,
                    token_outflows=token_outflows, treasury_lamports=pre_lamports,
                    treasury_token_balances=token_balances,
                    units_consumed=result.units_consumed)
