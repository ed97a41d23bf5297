"""The last check before a signed transaction leaves the building: simulate it and refuse
it if the treasury would lose more than the quote bound.

What is checked, on a transaction the treasury has signed but never sent:

1. Shape, again (the quote row could have been tampered with after pricing): the quote's
   instructions pass the quote-time policy (allow-listed programs and program
   instructions, the treasury as the only signer), the message has no lookup tables.
2. Simulation succeeds (`err` is null). Expired blockhash and "already processed" are not
   refusals: they tell the caller to re-sign, or to look the signature up.
3. Value: lamports and tokens are conserved inside a transaction, except the fee (burnt)
   and token supply changes (mint/burn). So what the treasury gives away equals what every
   OTHER writable account of the message gains:

       treasury SOL spend     = fee + Σ (post − pre) lamports of the other writable accounts
       treasury token spend   = Σ (post − pre) amount of the other token accounts of the mint
                                − (post − pre) supply of the mint

   and must be ≤ `quote.max_lamports_spend` and ≤ `quote.token_outflows[mint]` (absent = 0).
   Measuring the OTHER accounts, not the treasury itself, matters: the treasury's balance
   moves all the time under concurrent executions, so "treasury before vs. after" taken
   from two RPC calls would be wrong under load, while the recipients of this transaction
   are normally touched by nobody else. Their pre-state is read before and after the
   simulation; if it moved in between, the check is repeated.
4. Treasury-owned accounts keep their owner: the treasury wallet stays a System account
   with no data; every token account the treasury owns still exists after simulation,
   still belongs to the treasury, and has no delegate and no new close authority.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from solders.account import Account
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.token.state import Mint, TokenAccount, TokenAccountState
from solders.transaction import VersionedTransaction

from config.errors import ServiceError
from execution.models import FailReason
from execution.solana.backend import SolanaBackend, SolanaError
from quotes.models import Quote
from quotes.solana_tx import execution_fee_lamports, work_from_instructions

SYSTEM_PROGRAM_ID = Pubkey.from_string("11111111111111111111111111111111")
TOKEN_PROGRAM_IDS = frozenset({
    Pubkey.from_string("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"),
    Pubkey.from_string("TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb"),
})
TOKEN_ACCOUNT_SIZE = 165
MINT_SIZE = 82
STABLE_READ_TRIES = 5

# Simulation errors that mean "the treasury cannot pay", not "the work is broken".
_INSUFFICIENT_ERRORS = {"InsufficientFundsForFee", "InsufficientFundsForRent"}
# Custom error 1 is "insufficient funds" in both the System program (ResultWithNegativeLamports)
# and SPL Token (InsufficientFunds).
_INSUFFICIENT_CUSTOM_CODE = 1


@dataclass(frozen=True)
class GuardVerdict:
    """`ok`: send it. `refused`: never send it (fail_reason says why). `expired`: the
    blockhash is gone, sign a new attempt. `landed`: this signature is already on chain.
    `unstable`: the accounts kept moving while we looked; try again shortly."""

    outcome: str
    fail_reason: str = ""
    message: str = ""
    lamports_spend: int = 0
    token_spend: dict[str, int] = field(default_factory=dict)
    units_consumed: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def _refused(reason: str, message: str, **details: Any) -> GuardVerdict:
    return GuardVerdict("refused", fail_reason=reason, message=message, details=details)


@dataclass(frozen=True)
class _Token:
    mint: Pubkey
    owner: Pubkey
    amount: int
    delegate: Pubkey | None
    close_authority: Pubkey | None


def _token_account(account: Account | None) -> _Token | None:
    if account is None or account.owner not in TOKEN_PROGRAM_IDS:
        return None
    data = bytes(account.data)
    # A Token-2022 account with extensions is longer and says "account" (2) at byte 165.
    if len(data) < TOKEN_ACCOUNT_SIZE or (len(data) > TOKEN_ACCOUNT_SIZE and data[165] != 2):
        return None
    try:
        parsed = TokenAccount.from_bytes(data[:TOKEN_ACCOUNT_SIZE])
    except Exception:
        return None
    if parsed.state == TokenAccountState.Uninitialized:
        return None
    return _Token(parsed.mint, parsed.owner, int(parsed.amount), parsed.delegate,
                  parsed.close_authority)


def _mint_supply(account: Account | None) -> int | None:
    if account is None or account.owner not in TOKEN_PROGRAM_IDS:
        return None
    data = bytes(account.data)
    if len(data) < MINT_SIZE or (TOKEN_ACCOUNT_SIZE > len(data) > MINT_SIZE):
        return None
    try:
        return int(Mint.from_bytes(data[:MINT_SIZE]).supply)
    except Exception:
        return None


def _lamports(account: Account | None) -> int:
    return 0 if account is None else int(account.lamports)


def _state(account: Account | None) -> tuple[int, bytes, Pubkey | None]:
    if account is None:
        return (0, b"", None)
    return (int(account.lamports), bytes(account.data), account.owner)


def _writable_keys(message: Any) -> list[Pubkey]:
    header = message.header
    keys = list(message.account_keys)
    signed = header.num_required_signatures
    writable_signed = signed - header.num_readonly_signed_accounts
    writable_unsigned_end = len(keys) - header.num_readonly_unsigned_accounts
    return [k for i, k in enumerate(keys)
            if (i < writable_signed if i < signed else i < writable_unsigned_end)]


def _simulation_error_verdict(err: Any, logs: list[str]) -> GuardVerdict:
    if err == "BlockhashNotFound":
        return GuardVerdict("expired", message="blockhash expired before the first send")
    if err == "AlreadyProcessed":
        return GuardVerdict("landed", message="this signature has already landed")
    tail = logs[-5:]
    if (isinstance(err, str) and err in _INSUFFICIENT_ERRORS) or (
        isinstance(err, dict)
        and isinstance(err.get("InstructionError"), list)
        and len(err["InstructionError"]) == 2
        and err["InstructionError"][1] == {"Custom": _INSUFFICIENT_CUSTOM_CODE}
    ):
        return _refused(FailReason.INSUFFICIENT_TREASURY,
                        "The treasury cannot cover this transaction", err=err, logs=tail)
    return _refused(FailReason.SIMULATION_FAILED, "Simulation failed", err=err, logs=tail)


def _shape_verdict(*, tx: VersionedTransaction, quote: Quote, treasury: Pubkey
                   ) -> GuardVerdict | None:
    """Check 1 (no RPC): a refusal, or None when the shape is right."""
    message = tx.message
    if isinstance(message, MessageV0) and message.address_table_lookups:
        return _refused(FailReason.INVALID_TRANSACTION, "Address lookup tables are not allowed")
    keys = list(message.account_keys)
    if message.header.num_required_signatures != 1 or keys[0] != treasury:
        return _refused(FailReason.INVALID_TRANSACTION,
                        "The treasury must be the fee payer and the only signer")
    try:
        work_from_instructions(quote.instructions, treasury=treasury)
    except ServiceError as exc:
        reason = (FailReason.PROGRAM_NOT_ALLOWED if exc.code == "PROGRAM_NOT_ALLOWED"
                  else FailReason.INVALID_TRANSACTION)
        return _refused(reason, exc.message, **exc.details)
    return None


def outflow_guard_check_many(*, backend: SolanaBackend,
                             items: list[tuple[VersionedTransaction, Quote]],
                             treasury: Pubkey) -> list[GuardVerdict | None]:
    """`outflow_guard_check` for a batch, in three RPC round trips for all of it: the other
    accounts of every transaction read once before, all simulations at once, the accounts
    read once after. None where this pass could not decide (an RPC error, or accounts that
    moved meanwhile): the caller then asks `outflow_guard_check` for that one alone."""
    verdicts: list[GuardVerdict | None] = [
        _shape_verdict(tx=tx, quote=quote, treasury=treasury) for tx, quote in items]
    pending = [i for i, verdict in enumerate(verdicts) if verdict is None]
    if not pending:
        return verdicts
    writable = {i: _writable_keys(items[i][0].message) for i in pending}
    others = {i: [k for k in writable[i] if k != treasury] for i in pending}
    every_other = list(dict.fromkeys(k for i in pending for k in others[i]))
    try:
        before = backend.accounts(every_other) if every_other else {}
        simulations = backend.simulate_many([(items[i][0], writable[i]) for i in pending])
        after = backend.accounts(every_other) if every_other else {}
    except SolanaError:
        return verdicts
    for i, simulation in zip(pending, simulations, strict=True):
        if isinstance(simulation, SolanaError):
            continue
        if simulation.err is not None:
            verdicts[i] = _simulation_error_verdict(simulation.err, simulation.logs)
        elif all(_state(before[k]) == _state(after[k]) for k in others[i]):
            verdicts[i] = _judge(quote=items[i][1], treasury=treasury, others=others[i],
                                 before=before, post=simulation.post_accounts,
                                 units=simulation.units_consumed)
    return verdicts


def outflow_guard_check(*, backend: SolanaBackend, tx: VersionedTransaction, quote: Quote,
                        treasury: Pubkey) -> GuardVerdict:
    """Simulate `tx` and decide whether it may be sent for `quote` (see module docstring)."""
    refusal = _shape_verdict(tx=tx, quote=quote, treasury=treasury)
    if refusal is not None:
        return refusal
    writable = _writable_keys(tx.message)
    others = [k for k in writable if k != treasury]
    for attempt in range(STABLE_READ_TRIES):
        before = backend.accounts(others) if others else {}
        simulation = backend.simulate(tx, writable)
        if simulation.err is not None:
            return _simulation_error_verdict(simulation.err, simulation.logs)
        after = backend.accounts(others) if others else {}
        if all(_state(before[k]) == _state(after[k]) for k in others):
            return _judge(quote=quote, treasury=treasury, others=others, before=before,
                          post=simulation.post_accounts, units=simulation.units_consumed)
        time.sleep(0.002 * (attempt + 1))
    return GuardVerdict("unstable", message="the transaction's accounts kept changing")


def _judge(*, quote: Quote, treasury: Pubkey, others: list[Pubkey],
           before: dict[Pubkey, Account | None], post: dict[Pubkey, Account | None],
           units: int) -> GuardVerdict:
    treasury_after = post.get(treasury)
    if treasury_after is None:
        return _refused(FailReason.OUTFLOW_EXCEEDS_QUOTE, "The transaction would empty the treasury")
    if treasury_after.owner != SYSTEM_PROGRAM_ID or bytes(treasury_after.data):
        return _refused(FailReason.OUTFLOW_EXCEEDS_QUOTE,
                        "The transaction would change the treasury account's owner or data")

    fee = execution_fee_lamports(int(quote.estimated_compute_units),
                                 int(quote.priority_fee_micro_lamports))
    lamports_spend = fee + sum(_lamports(post.get(k)) - _lamports(before[k]) for k in others)

    token_spend: dict[str, int] = {}
    for key in others:
        pre_token, post_token = _token_account(before[key]), _token_account(post.get(key))
        if pre_token is not None and pre_token.owner == treasury:
            # The treasury's own token account: it must survive, unchanged in ownership.
            if (post_token is None or post_token.owner != treasury
                    or post_token.delegate is not None
                    or post_token.close_authority not in (None, pre_token.close_authority)):
                return _refused(FailReason.OUTFLOW_EXCEEDS_QUOTE,
                                "The transaction would close, delegate or hand over a treasury "
                                "token account", account=str(key))
            continue
        if post_token is not None and post_token.owner == treasury:
            continue  # a new treasury token account (e.g. created to receive): not a spend
        if pre_token is None and post_token is None:
            supply_before, supply_after = _mint_supply(before[key]), _mint_supply(post.get(key))
            if supply_before is not None and supply_after is not None:
                mint = str(key)
                token_spend[mint] = token_spend.get(mint, 0) - (supply_after - supply_before)
            continue
        mint_key = (post_token or pre_token).mint  # type: ignore[union-attr]
        gained = (post_token.amount if post_token else 0) - (pre_token.amount if pre_token else 0)
        token_spend[str(mint_key)] = token_spend.get(str(mint_key), 0) + gained

    details = {"lamports_spend": str(lamports_spend), "fee": str(fee),
               "max_lamports_spend": str(quote.max_lamports_spend),
               "token_spend": {m: str(a) for m, a in token_spend.items()}}
    if lamports_spend > int(quote.max_lamports_spend):
        return _refused(FailReason.OUTFLOW_EXCEEDS_QUOTE,
                        "The transaction would spend more SOL than the quote allows", **details)
    bounds = {str(m): int(a) for m, a in (quote.token_outflows or {}).items()}
    for mint, amount in token_spend.items():
        if amount > bounds.get(mint, 0):
            return _refused(FailReason.OUTFLOW_EXCEEDS_QUOTE,
                            "The transaction would send more tokens than the quote allows",
                            mint=mint, bound=str(bounds.get(mint, 0)), **details)
    return GuardVerdict("ok", lamports_spend=lamports_spend,
                        token_spend={m: a for m, a in token_spend.items() if a},
                        units_consumed=units, details=details)
