"""Reconciliation: prove the books match themselves and the chains, or say exactly where not.

`reconcile_run` runs every check below, writes one `ReconciliationReport` (its checks and
every mismatch), and on any mismatch raises an operator alert and trips the circuit breaker
(`risk.services.breaker_trip_reconciliation_mismatch`): no money moves until someone looks.

Checks:
  ledger_balanced        every journal entry sums to zero per asset
  user_balances          cached UserBalance columns equal their postings; no user account
                         below zero
  quotes_and_payments    every paid quote has exactly one verified payment or balance lock,
                         every verified payment pays a paid quote, executed quotes have a
                         confirmed execution (and earned revenue) and the reverse; every
                         payment is booked with its amount; customer funds equal paid quotes
                         not yet executed; refunds payable equal refunds still owed
  chain_transactions     every Solana transaction we recorded (recent executions) exists on
                         chain with the treasury SOL/token movement we booked, and no other
                         attempt of an execution landed; every completed withdrawal's payout
                         is on its chain (sandbox: its signed bytes verify) and booked
  treasury_balances      books equal the chain for every treasury asset, within what is in
                         flight (signed, not yet booked). Solana: SOL and each SPL mint via
                         the Solana RPC (LiteSVM sandbox or a node). Stellar / NEAR: Horizon
                         and NEAR RPC in live mode; in sandbox mode they have no ledger and
                         are reported "not_checkable" rather than pretended equal
  settlements            stuck and failed settlements (reported, not a mismatch)

Timing: the books and the chain are read at different instants. Each balance is accepted if
the chain lies within [books − in flight, books] measured either just before or just after the
chain read, so a transaction landing mid-run is not a false alarm, while money moved behind
our back (outside any execution) is.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from config.chains import Chain, format_amount
from config.errors import InvalidRequest
from execution.models import Execution, ExecutionAttempt, ExecutionStatus
from quotes.models import Quote, QuoteStatus
from risk.audit import audit_record
from settlement.ledger import Leg, account_balance, account_code, ledger_post, unbalanced_entries
from settlement.models import (
    FundingPayment,
    FundingPaymentStatus,
    JournalEntry,
    Posting,
    ReconciliationReport,
    Refund,
    RefundStatus,
    Settlement,
    SettlementStatus,
    TreasuryAccount,
    UserBalance,
    Withdrawal,
    WithdrawalStatus,
)
from settlement.selectors import settlements_stuck, user_balance_disagreements

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
OK, MISMATCH, NOT_CHECKABLE, ERROR = "ok", "mismatch", "not_checkable", "error"
# Chain transactions are re-read for this long after they were recorded; older ones were
# re-read by earlier runs (every 10 minutes) and a node may have pruned them.
CHAIN_TX_LOOKBACK = dt.timedelta(days=7)
Q_ = QuoteStatus
PAID_QUOTE_STATUSES = (Q_.COMMITTED, Q_.EXECUTING, Q_.EXECUTED, Q_.FAILED, Q_.REFUND_DUE,
                       Q_.REFUNDED)
_COMMITTING = (FundingPaymentStatus.MATCHED, FundingPaymentStatus.OVERPAID)
_OPEN_REFUNDS = (RefundStatus.DUE, RefundStatus.APPROVED, RefundStatus.SENT, RefundStatus.FAILED)


@dataclass
class CheckResult:
    name: str
    status: str = OK
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    def mismatch(self, problem: str, **facts: Any) -> None:
        self.mismatches.append({"check": self.name, "problem": problem,
                                **{k: _plain(v) for k, v in facts.items()}})

    def close(self, summary: str) -> CheckResult:
        if self.mismatches and self.status == OK:
            self.status = MISMATCH
        self.summary = summary if not self.mismatches else f"{len(self.mismatches)} mismatch(es): {summary}"
        return self


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(int(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


# -- books against themselves -----------------------------------------------------------------


def _one_snapshot(check: Callable[[], CheckResult]) -> Callable[[], CheckResult]:
    """Run a books-only check on ONE database snapshot (REPEATABLE READ).

    In autocommit every query sees its own snapshot, so a payment committing or an
    execution finishing between two reads of one check looked like a mismatch (the chaos
    suite saw 4 false mismatches in 65 runs under load, and each trips the breaker).
    Inside an enclosing transaction (tests) the caller's snapshot rules apply.
    """
    @functools.wraps(check)
    def run() -> CheckResult:
        if connection.in_atomic_block:
            return check()
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return check()
    return run


@_one_snapshot
def check_ledger_balanced() -> CheckResult:
    result = CheckResult("ledger_balanced")
    for row in unbalanced_entries():
        result.mismatch("journal entry does not balance", **row)
    entries = JournalEntry.objects.count()
    result.details = {"entries": entries}
    return result.close(f"{entries} entries, all balanced per asset")


@_one_snapshot
def check_user_balances() -> CheckResult:
    result = CheckResult("user_balances")
    for problem in user_balance_disagreements():
        result.mismatch(problem.pop("problem", "cached balance differs from its postings"), **problem)
    result.details = {"balances": UserBalance.objects.count()}
    return result.close("cached balances equal their postings; none below zero")


def _liability(prefix: str) -> dict[str, int]:
    """Credit balances (positive = we owe) of every account whose code starts with prefix."""
    rows = (Posting.objects.filter(account__code__startswith=prefix)
            .values("account__code").annotate(total=Sum("amount")))
    return {r["account__code"]: -int(r["total"] or 0) for r in rows}


@_one_snapshot
def check_quotes_and_payments() -> CheckResult:
    result = CheckResult("quotes_and_payments")
    paid = dict(Quote.objects.filter(status__in=PAID_QUOTE_STATUSES).values_list("pk", "status"))
    payments_per_quote: dict[Any, int] = defaultdict(int)
    for payment in FundingPayment.objects.filter(status__in=_COMMITTING).only("pk", "quote_id", "tx_hash"):
        payments_per_quote[payment.quote_id] += 1
        if payment.quote_id not in paid:
            result.mismatch("verified payment committed a quote that is not paid",
                            payment_id=payment.pk, quote_id=payment.quote_id, tx_hash=payment.tx_hash)
    balance_funded = set(JournalEntry.objects.filter(reference__startswith="balance_lock:")
                         .values_list("quote_id", flat=True))
    for quote_id in balance_funded - set(paid):
        result.mismatch("balance lock for a quote that is not paid", quote_id=quote_id)
    for quote_id, status in paid.items():
        sources = payments_per_quote.get(quote_id, 0) + (1 if quote_id in balance_funded else 0)
        if sources == 0:
            result.mismatch("paid quote without a verified payment or balance lock",
                            quote_id=quote_id, status=status)
        elif sources > 1:
            result.mismatch("quote funded more than once", quote_id=quote_id, sources=sources)

    executed = set(Quote.objects.filter(status=Q_.EXECUTED).values_list("pk", flat=True))
    confirmed = set(Execution.objects.filter(status=ExecutionStatus.CONFIRMED)
                    .values_list("quote_id", flat=True))
    for quote_id in executed - confirmed:
        result.mismatch("executed quote without a confirmed execution", quote_id=quote_id)
    for quote_id in confirmed - executed:
        result.mismatch("confirmed execution whose quote is not executed", quote_id=quote_id)
    earned = {ref.split(":", 1)[1] for ref in JournalEntry.objects.filter(
        reference__startswith="revenue:").values_list("reference", flat=True)}
    for quote_id in executed:
        if str(quote_id) not in earned:
            result.mismatch("executed quote has not earned its revenue", quote_id=quote_id)

    _check_payments_booked(result)
    _check_customer_funds(result, paid, balance_funded)
    _check_refunds_payable(result)
    result.details = {"paid_quotes": len(paid), "balance_funded": len(balance_funded),
                      "executed": len(executed)}
    return result.close(f"{len(paid)} paid quotes, each funded once; payments and refunds booked")


def _check_payments_booked(result: CheckResult) -> None:
    booked: dict[str, int] = {}
    rows = (Posting.objects.filter(entry__reference__startswith="payment:",
                                   account__code__startswith="treasury:")
            .values("entry__reference").annotate(total=Sum("amount")))
    for row in rows:
        booked[row["entry__reference"]] = int(row["total"] or 0)
    for payment in FundingPayment.objects.only("pk", "chain", "tx_hash", "amount"):
        reference = f"payment:{payment.chain}:{payment.tx_hash}"
        if booked.get(reference) != int(payment.amount):
            result.mismatch("payment not booked with its amount", payment_id=payment.pk,
                            tx_hash=payment.tx_hash, amount=payment.amount,
                            booked=booked.get(reference))


def _check_customer_funds(result: CheckResult, paid: dict[Any, str], balance_funded: set[Any]) -> None:
    """customer_funds holds exactly the total cost of payment-funded quotes not yet executed
    or failed (execution earns it; failure moves it to refunds payable)."""
    waiting = Quote.objects.filter(status__in=[Q_.COMMITTED, Q_.EXECUTING]).exclude(pk__in=balance_funded)
    expected: dict[str, int] = defaultdict(int)
    for quote in waiting.only("source_chain", "source_asset", "total_cost"):
        code = account_code("customer_funds", quote.source_chain, quote.source_asset)
        expected[code] += int(quote.total_cost)
    held = _liability("customer_funds:")
    for code in set(expected) | set(held):
        if held.get(code, 0) != expected.get(code, 0):
            result.mismatch("customer funds differ from paid quotes awaiting execution",
                            account=code, books=held.get(code, 0), quotes=expected.get(code, 0))


def _check_refunds_payable(result: CheckResult) -> None:
    expected: dict[str, int] = defaultdict(int)
    for refund in Refund.objects.filter(status__in=_OPEN_REFUNDS).only("chain", "asset", "amount"):
        expected[account_code("refunds_payable", refund.chain, refund.asset)] += int(refund.amount)
    held = _liability("refunds_payable:")
    for code in set(expected) | set(held):
        if held.get(code, 0) != expected.get(code, 0):
            result.mismatch("refunds payable differ from refunds still owed", account=code,
                            books=held.get(code, 0), refunds=expected.get(code, 0))


# -- recorded chain transactions --------------------------------------------------------------


def _solana_handles() -> tuple[Any, Any]:
    from execution.services.chain import solana_backend, treasury_pubkey

    return solana_backend(), treasury_pubkey()


def _booked_by_reference(reference: str) -> dict[str, int]:
    """asset → debit-positive sum of the treasury legs of one entry."""
    rows = (Posting.objects.filter(entry__reference=reference, account__code__startswith="treasury:")
            .values("asset").annotate(total=Sum("amount")))
    return {r["asset"]: int(r["total"] or 0) for r in rows}


def _chain_movement(details: Any, treasury: Any) -> dict[str, int]:
    moved: dict[str, int] = defaultdict(int)
    moved["SOL"] = details.lamport_delta(treasury)
    for balance in details.pre_token_balances:
        if balance.owner == treasury:
            moved[str(balance.mint)] -= balance.amount
    for balance in details.post_token_balances:
        if balance.owner == treasury:
            moved[str(balance.mint)] += balance.amount
    return {asset: amount for asset, amount in moved.items() if amount}


def check_chain_transactions() -> CheckResult:
    from solders.signature import Signature

    from execution.solana.backend import SolanaError

    result = CheckResult("chain_transactions")
    since = timezone.now() - CHAIN_TX_LOOKBACK
    executions = list(Execution.objects.filter(
        status__in=[ExecutionStatus.CONFIRMED, ExecutionStatus.FAILED], updated_at__gte=since)
        .only("pk", "status", "signature"))
    attempts: dict[Any, list[str]] = defaultdict(list)
    for execution_id, signature in ExecutionAttempt.objects.filter(
            execution_id__in=[e.pk for e in executions]).values_list("execution_id", "signature"):
        attempts[execution_id].append(signature)
    checked = 0
    try:
        backend, treasury = _solana_handles()
        for execution in executions:
            signatures = set(attempts.get(execution.pk, [])) | ({execution.signature} - {""})
            landed = []
            for signature in sorted(signatures):
                details = backend.transaction(Signature.from_string(signature))
                if details is not None:
                    landed.append((signature, details))
            checked += 1
            booked = _booked_by_reference(f"execution:{execution.pk}")
            if execution.status == ExecutionStatus.CONFIRMED and not any(
                    sig == execution.signature for sig, _ in landed):
                result.mismatch("confirmed execution's transaction is not on chain",
                                execution_id=execution.pk, signature=execution.signature)
            for signature, details in landed:
                if signature != execution.signature:
                    result.mismatch("another attempt of this execution landed",
                                    execution_id=execution.pk, signature=signature)
                    continue
                chain = _chain_movement(details, treasury)
                if chain != booked:
                    result.mismatch("chain movement differs from the booked one",
                                    execution_id=execution.pk, signature=signature,
                                    chain=chain, books=booked)
    except SolanaError as exc:
        result.status = ERROR
        result.details = {"error": f"Solana unavailable: {type(exc).__name__}", "checked": checked}
        return result.close(f"Solana unavailable after {checked} executions")
    payouts_checked = _check_withdrawal_payouts(result, since)
    refunds_checked = _check_refund_payouts(result, since)
    payments_checked = _check_incoming_payments(result, since)
    result.details.update({"executions": checked, "withdrawals": payouts_checked,
                           "refund_payouts": refunds_checked, "payments": payments_checked,
                           "lookback_days": CHAIN_TX_LOOKBACK.days})
    return result.close(f"{checked} executions, {payouts_checked} withdrawals, {refunds_checked} "
                        f"refund payouts and {payments_checked} incoming payments match the chain")


def _check_withdrawal_payouts(result: CheckResult, since: dt.datetime) -> int:
    from settlement.services.withdrawals import _signed_payout

    W = WithdrawalStatus
    checked = 0
    finals = Withdrawal.objects.filter(status__in=[W.COMPLETED, W.FAILED, W.REJECTED],
                                       updated_at__gte=since)
    for withdrawal in finals:
        checked += 1
        paid = _booked_by_reference(f"payout:withdrawal:{withdrawal.pk}")
        returned = JournalEntry.objects.filter(reference=f"withdrawal_return:{withdrawal.pk}").exists()
        if withdrawal.status != W.COMPLETED:
            if paid or not returned:
                result.mismatch("unpaid withdrawal not returned to the balance (or booked as paid)",
                                withdrawal_id=withdrawal.pk, status=withdrawal.status)
            continue
        fee = int(withdrawal.network_fee or 0)
        if returned or paid.get(withdrawal.asset) != -(int(withdrawal.amount) + fee):
            result.mismatch("completed withdrawal not booked as paid", withdrawal_id=withdrawal.pk,
                            books=paid, amount=withdrawal.amount, fee=fee)
        _check_stored_payout(
            result, chain=withdrawal.chain, signed=_signed_payout(withdrawal),
            destination=withdrawal.destination, amount=int(withdrawal.amount), fee=fee,
            key="withdrawal_id", pk=withdrawal.pk,
            invalid="stored payout does not pay the withdrawal",
            off_chain="withdrawal payout differs on chain")
    return checked


def _check_stored_payout(result: CheckResult, *, chain: str, signed: Any, destination: str,
                         amount: int, key: str, pk: Any, invalid: str, off_chain: str,
                         fee: int | None = None) -> None:
    """A payout we signed and stored: its bytes pay exactly `amount` to `destination`, and in
    live mode the chain has it (with `fee`, when given). Withdrawals and refunds alike."""
    from settlement.payouts import PayoutInvalid, payout_chain

    payouts = payout_chain(chain)
    try:
        payouts.verify_offline(signed, destination=destination, amount=amount)
    except PayoutInvalid as exc:
        result.mismatch(invalid, **{key: pk}, error=str(exc))
        return
    if settings.CHAIN_MODE != "live":
        return
    state = payouts.status(signed)
    if state.state == "unknown":
        result.details.setdefault("unverified_payouts", []).append(str(pk))
    elif state.state != "success" or (fee is not None and state.fee != fee):
        extra = {"chain_fee": state.fee, "fee": fee} if fee is not None else {}
        result.mismatch(off_chain, **{key: pk}, chain_state=state.state, **extra)


def _check_incoming_payments(result: CheckResult, since: dt.datetime) -> int | str:
    """Live mode: every payment we booked is re-read from its chain (successful, final, the
    amount we booked). Sandbox mode has no ledger to re-read: the signed transaction was the
    evidence when it arrived, and this says so instead of counting it as checked."""
    if settings.CHAIN_MODE != "live":
        return "not checkable in sandbox"
    from settlement.chains.base import ChainUnavailable, PaymentInvalid
    from settlement.verifiers import payment_verify

    checked = 0
    for payment in FundingPayment.objects.filter(received_at__gte=since).order_by("received_at"):
        try:
            on_chain = payment_verify(chain=payment.chain, tx_hash=payment.tx_hash,
                                      sender=payment.from_address)
        except ChainUnavailable:
            result.details.setdefault("unverified_payments", []).append(str(payment.pk))
            continue
        except PaymentInvalid as exc:
            result.mismatch("booked payment is not on chain as booked", payment_id=payment.pk,
                            tx_hash=payment.tx_hash, chain_says=exc.code)
            continue
        checked += 1
        if on_chain.amount != int(payment.amount) or on_chain.asset != payment.asset:
            result.mismatch("payment amount on chain differs from the booked one",
                            payment_id=payment.pk, tx_hash=payment.tx_hash,
                            chain_amount=on_chain.amount, books=payment.amount)
    return checked


def _check_refund_payouts(result: CheckResult, since: dt.datetime) -> int:
    """Refunds paid by our payout signer: their signed bytes pay exactly the refund, and in
    live mode the chain has them. (A refund completed by hand carries only a tx hash.)"""
    from settlement.payouts import SignedPayout, payout_details_from_signed

    checked = 0
    for refund in Refund.objects.filter(status=RefundStatus.COMPLETED, updated_at__gte=since).exclude(
            signed_transaction=""):
        checked += 1
        signed = SignedPayout(refund.tx_hash, refund.signed_transaction,
                              payout_details_from_signed(refund.chain, refund.signed_transaction))
        _check_stored_payout(
            result, chain=refund.chain, signed=signed, destination=refund.destination,
            amount=int(refund.amount), key="refund_id", pk=refund.pk,
            invalid="stored refund payout does not pay the refund",
            off_chain="refund payout is not on chain")
    return checked


# -- treasury balances ------------------------------------------------------------------------


@dataclass(frozen=True)
class BooksSnapshot:
    books: int
    in_flight: int  # what may have left on chain and is not booked yet

    def admits(self, chain: int) -> bool:
        return self.books - self.in_flight <= chain <= self.books


def _solana_in_flight() -> dict[str, int]:
    """Upper bound of what signed, unbooked executions may already have moved on chain."""
    in_flight: dict[str, int] = defaultdict(int)
    quotes = Quote.objects.filter(execution__status__in=[ExecutionStatus.SIGNED,
                                                         ExecutionStatus.SUBMITTED])
    for quote in quotes.only("max_lamports_spend", "token_outflows"):
        in_flight["SOL"] += int(quote.max_lamports_spend)
        for mint, amount in (quote.token_outflows or {}).items():
            in_flight[mint] += int(amount)
    return in_flight


def _payout_in_flight(chain: str) -> int:
    """Signed payouts (withdrawals, refunds) the chain may already have, not yet booked:
    their amount plus the most their fee can be."""
    from settlement.payouts import payout_details_from_signed

    total = 0
    for withdrawal in Withdrawal.objects.filter(
            chain=chain, status__in=[WithdrawalStatus.SIGNED, WithdrawalStatus.SUBMITTED]):
        total += int(withdrawal.amount) + int((withdrawal.chain_details.get("signing") or {})
                                              .get("max_fee") or 0)
    for refund in Refund.objects.filter(chain=chain, status=RefundStatus.SENT).exclude(signed_transaction=""):
        details = payout_details_from_signed(chain, refund.signed_transaction)
        total += int(refund.amount) + int(details.get("max_fee") or 0)
    return total


def _snapshot(chain: str, assets: list[str]) -> dict[str, BooksSnapshot]:
    if chain == Chain.SOLANA:
        in_flight = _solana_in_flight()
    else:
        in_flight = {asset: _payout_in_flight(chain) for asset in assets}
    return {asset: BooksSnapshot(account_balance(account_code("treasury", chain, asset)),
                                 in_flight.get(asset, 0)) for asset in assets}


def _treasury_assets() -> dict[str, list[TreasuryAccount]]:
    """Treasury rows per chain, plus any asset the books hold without a row."""
    rows: dict[str, list[TreasuryAccount]] = defaultdict(list)
    for account in TreasuryAccount.objects.order_by("chain", "asset"):
        rows[account.chain].append(account)
    known = {(a.chain, a.asset) for accounts in rows.values() for a in accounts}
    for code in Posting.objects.filter(account__code__startswith="treasury:").values_list(
            "account__code", flat=True).distinct():
        _, chain, asset = code.split(":", 2)
        if (chain, asset) not in known:
            rows[chain].append(TreasuryAccount(chain=chain, asset=asset, address="", decimals=0))
            known.add((chain, asset))
    return rows


def _solana_chain_balances(accounts: list[TreasuryAccount]) -> dict[str, int]:
    from solders.pubkey import Pubkey

    from execution.solana.spl import associated_token_address

    backend, treasury = _solana_handles()
    balances: dict[str, int] = {}
    for account in accounts:
        if account.asset == "SOL":
            balances["SOL"] = backend.balance(treasury)
        else:  # the ledger names a token by its mint; the treasury holds it in its ATA
            mint = Pubkey.from_string(account.asset)
            balances[account.asset] = backend.token_balance(associated_token_address(treasury, mint))
    return balances


def _other_chain_balance(chain: str) -> int:
    from settlement.payouts import payout_chain

    return payout_chain(chain).treasury_balance()


def check_treasury_balances() -> CheckResult:
    from execution.solana.backend import SolanaError
    from settlement.chains.base import ChainUnavailable

    result = CheckResult("treasury_balances")
    per_asset: dict[str, Any] = {}
    now = timezone.now()
    for chain, accounts in _treasury_assets().items():
        assets = [a.asset for a in accounts]
        if chain != Chain.SOLANA and settings.CHAIN_MODE != "live":
            for account in accounts:
                books = account_balance(account_code("treasury", chain, account.asset))
                per_asset[f"{chain}:{account.asset}"] = {
                    "status": NOT_CHECKABLE, "books": str(books),
                    "note": "sandbox mode: this chain has no ledger to read a balance from; "
                            "incoming payments were checked by their signatures only"}
            continue
        before = _snapshot(chain, assets)
        try:
            if chain == Chain.SOLANA:
                chain_balances = _solana_chain_balances(accounts)
            else:
                chain_balances = {assets[0]: _other_chain_balance(chain)} if assets else {}
        except (SolanaError, ChainUnavailable, OSError) as exc:
            for asset in assets:
                per_asset[f"{chain}:{asset}"] = {"status": ERROR, "error": type(exc).__name__}
            result.status = ERROR
            continue
        after = _snapshot(chain, assets)
        for account in accounts:
            asset = account.asset
            on_chain = chain_balances.get(asset)
            if on_chain is None:
                continue
            first, second = before[asset], after[asset]
            decimals = account.decimals or 0
            entry = {"status": OK, "chain": str(on_chain), "books": str(second.books),
                     "in_flight": str(second.in_flight),
                     "difference": str(on_chain - second.books),
                     "display": {"chain": format_amount(on_chain, decimals),
                                 "books": format_amount(second.books, decimals) if second.books >= 0
                                 else str(second.books)}}
            if not (first.admits(on_chain) or second.admits(on_chain)):
                entry["status"] = MISMATCH
                result.mismatch("treasury balance on chain differs from the books",
                                chain_name=chain, asset=asset, chain_balance=on_chain,
                                books=second.books, in_flight=second.in_flight,
                                difference=on_chain - second.books)
            per_asset[f"{chain}:{asset}"] = entry
            if account.pk is not None:
                TreasuryAccount.objects.filter(pk=account.pk).update(
                    last_chain_balance=Decimal(on_chain), last_checked_at=now)
    result.details = {"assets": per_asset}
    checked = sum(1 for v in per_asset.values() if v["status"] in (OK, MISMATCH))
    not_checkable = [k for k, v in per_asset.items() if v["status"] == NOT_CHECKABLE]
    summary = f"{checked} treasury assets equal the chain within in-flight amounts"
    if not_checkable:
        summary += f"; not checkable in sandbox: {', '.join(not_checkable)}"
    return result.close(summary)


def check_settlements() -> CheckResult:
    result = CheckResult("settlements")
    stuck = list(settlements_stuck().values_list("pk", "status"))
    failed = Settlement.objects.filter(status=SettlementStatus.FAILED).count()
    result.details = {"stuck": [{"settlement_id": str(pk), "status": status} for pk, status in stuck[:100]],
                      "stuck_count": len(stuck), "failed_count": failed,
                      "stuck_after_seconds": settings.SETTLEMENT_STUCK_AFTER_SECONDS}
    return result.close(f"{len(stuck)} stuck, {failed} failed settlements (listed for operators)")


# -- the run ----------------------------------------------------------------------------------


CHECKS: list[tuple[str, Callable[[], CheckResult]]] = [
    ("ledger_balanced", check_ledger_balanced),
    ("user_balances", check_user_balances),
    ("quotes_and_payments", check_quotes_and_payments),
    ("chain_transactions", check_chain_transactions),
    ("treasury_balances", check_treasury_balances),
    ("settlements", check_settlements),
]
_RUN_LOCK = int.from_bytes(hashlib.sha256(b"reconciliation").digest()[:8], "big", signed=True)


def _run_check(name: str, check: Callable[[], CheckResult]) -> CheckResult:
    try:
        return check()
    except Exception as exc:  # a broken check is reported, and the others still run
        logger.exception("reconciliation check failed", extra={"check": name})
        return CheckResult(name, status=ERROR, summary=f"check crashed: {type(exc).__name__}",
                           details={"error": str(exc)[:500]})


def reconcile_run(*, triggered_by: str, progress: Progress | None = None) -> ReconciliationReport:
    """Run every check, store the report, and on a mismatch alert and trip the breaker.

    One run at a time (a PostgreSQL advisory lock): a concurrent call returns the running
    report instead of starting another. Chain reads happen outside any transaction.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_RUN_LOCK])
        acquired = bool(cursor.fetchone()[0])
    if not acquired:
        running = ReconciliationReport.objects.filter(outcome=ReconciliationReport.Outcome.RUNNING).first()
        if running is not None:
            return running
        raise InvalidRequest("A reconciliation is already running", code="CONFLICT", status=409)
    try:
        return _reconcile(triggered_by=triggered_by, progress=progress)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_RUN_LOCK])


def _reconcile(*, triggered_by: str, progress: Progress | None) -> ReconciliationReport:
    # We hold the run lock, so a report still "running" belongs to a run that died.
    ReconciliationReport.objects.filter(outcome=ReconciliationReport.Outcome.RUNNING).update(
        outcome=ReconciliationReport.Outcome.ERROR, finished_at=timezone.now(),
        checks={"abandoned": {"status": ERROR, "summary": "the run stopped before finishing",
                              "details": {}}})
    report = ReconciliationReport.objects.create(triggered_by=triggered_by[:128])
    results: list[CheckResult] = []
    total = len(CHECKS)
    for index, (name, check) in enumerate(CHECKS):
        if progress is not None:
            progress(name, index, total)
        results.append(_run_check(name, check))
    if progress is not None:
        progress("done", total, total)

    mismatches = [m for r in results for m in r.mismatches]
    errors = [r.name for r in results if r.status == ERROR]
    outcome = (ReconciliationReport.Outcome.MISMATCH if mismatches
               else ReconciliationReport.Outcome.ERROR if errors else ReconciliationReport.Outcome.OK)
    with transaction.atomic():
        report.outcome = outcome
        report.finished_at = timezone.now()
        report.checks = {r.name: {"status": r.status, "summary": r.summary, "details": _plain(r.details)}
                         for r in results}
        report.mismatches = mismatches[:1000]
        report.save(update_fields=["outcome", "finished_at", "checks", "mismatches"])
        audit_record(event_type=f"reconciliation_{outcome}", actor=f"reconciler:{triggered_by}"[:128],
                     entity_type="reconciliation_report", entity_id=report.pk,
                     details={"mismatches": len(mismatches), "errors": errors,
                              "checks": {r.name: r.status for r in results}})
        if mismatches:
            _on_mismatch(report, results, mismatches)
        elif errors:
            from risk.services import alert_raise

            alert_raise(kind="reconciliation_error",
                        message=f"Reconciliation {report.pk} could not complete: {', '.join(errors)}",
                        details={"report_id": report.pk, "checks": errors})
    return report


def _on_mismatch(report: ReconciliationReport, results: list[CheckResult],
                 mismatches: list[dict[str, Any]]) -> None:
    from risk.services import alert_raise, breaker_trip_reconciliation_mismatch

    failing = [r.name for r in results if r.mismatches]
    summary = {"checks": failing, "mismatch_count": len(mismatches), "first": mismatches[:5]}
    alert_raise(kind="reconciliation_mismatch",
                message=f"Reconciliation {report.pk} found {len(mismatches)} mismatch(es) in "
                        f"{', '.join(failing)}", details={"report_id": report.pk, **summary})
    tripped = breaker_trip_reconciliation_mismatch(report_id=report.pk, details=summary)
    logger.error("reconciliation mismatch", extra={"report_id": report.pk, "tripped": tripped,
                                                   "checks": failing})


# -- operator corrections ---------------------------------------------------------------------


def treasury_inventory_record(*, chain: str, asset: str, amount: int, reason: str, actor: str,
                              reference: str) -> JournalEntry:
    """Book owners' inventory moved into (amount > 0) or out of (< 0) a treasury: the
    opening balance, a top-up, or a reviewed loss. The only way to make the books follow
    money that did not come through a quote, a deposit or a payout; audited, once per
    `reference`."""
    reason = (reason or "").strip()
    if not reason or not reference:
        raise InvalidRequest("An inventory entry needs a reason and a reference")
    if amount == 0:
        raise InvalidRequest("An inventory entry moves a non-zero amount")
    with transaction.atomic():
        entry = ledger_post(
            reference=f"inventory:{reference}", kind="inventory_funding", description=reason,
            legs=[Leg(account_code("treasury", chain, asset), asset, amount),
                  Leg(account_code("inventory_funding", chain, asset), asset, -amount)])
        audit_record(event_type="treasury_inventory_recorded", actor=actor,
                     entity_type="journal_entry", entity_id=entry.pk,
                     details={"chain": chain, "asset": asset, "amount": str(amount),
                              "reason": reason, "reference": reference})
    return entry


def latest_reports(*, limit: int = 20) -> list[ReconciliationReport]:
    return list(ReconciliationReport.objects.order_by("-started_at")[:limit])
