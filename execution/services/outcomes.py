"""What an execution's final state means for the books, the quote, the user and the risk
counters. Called by the executor inside the transaction that records the final state, so
the execution, the quote, the ledger, the settlement or refund record and the risk counters
commit together or not at all.

Success:  quote executing → executed; ledger `execution:<id>` books the treasury's SOL and
          token outflow and the fee; ledger `revenue:<quote>` earns the customer's payment
          (from customer funds, or from the locked prepaid balance for a quote paid from
          one); a pending Settlement is opened; the spend reservation is consumed.
Failure:  quote → failed → refund_due; a fee the chain charged anyway is booked; the
          customer's funds move to refunds_payable and a Refund record is created (a quote
          paid from a prepaid balance is unlocked instead, and ends `refunded`); the spend
          reservation is released; the failure counts towards the circuit breaker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from config.chains import Chain
from execution.models import Execution
from quotes.models import Quote, QuoteStatus
from quotes.services.transitions import quote_transition, quote_transition_many
from risk.services.breaker import (
    breaker_record_execution_outcome,
    breaker_record_execution_successes,
)
from risk.services.limits import risk_release_execution
from settlement.ledger import EntrySpec, Leg, account_code, ledger_post, ledger_post_many
from settlement.models import FundingPayment, FundingPaymentStatus
from settlement.services.balances import balance_release_quote, balance_settle_quote
from settlement.services.refunds import refund_create, refund_destination
from settlement.services.settlements import settlement_open, settlement_open_many

logger = logging.getLogger(__name__)

REFUND_REASON = "execution_failed"


@dataclass(frozen=True)
class ChainOutcome:
    """What the chain says the landed transaction did to the treasury."""

    fee_lamports: int
    outflow_lamports: int  # SOL that left the treasury to other accounts (fee excluded)
    token_outflows: dict[str, int] = field(default_factory=dict)  # mint → base units

    @property
    def lamports_spent(self) -> int:
        return self.fee_lamports + self.outflow_lamports


def funding_payment_of(quote: Quote) -> FundingPayment | None:
    """The payment that committed the quote (None for a quote paid from a balance)."""
    return funding_payments_of([quote.pk]).get(quote.pk)


def _customer_funds_account(quote: Quote) -> str:
    return account_code("customer_funds", quote.source_chain, quote.source_asset)


def _chain_outcome_entry(*, execution: Execution, quote: Quote, outcome: ChainOutcome,
                         signature: str) -> EntrySpec | None:
    """The ledger entry of what a landed transaction cost the treasury (None: nothing)."""
    sol = "SOL"
    legs = [Leg(account_code("treasury", Chain.SOLANA, sol), sol, -outcome.lamports_spent)]
    if outcome.outflow_lamports:
        legs.append(Leg(account_code("delivered", Chain.SOLANA, sol), sol, outcome.outflow_lamports))
    if outcome.fee_lamports:
        legs.append(Leg(account_code("network_fees", Chain.SOLANA, sol), sol, outcome.fee_lamports))
    for mint, amount in sorted(outcome.token_outflows.items()):
        if amount:
            legs += [Leg(account_code("treasury", Chain.SOLANA, mint), mint, -amount),
                     Leg(account_code("delivered", Chain.SOLANA, mint), mint, amount)]
    if outcome.lamports_spent == 0 and not any(outcome.token_outflows.values()):
        return None
    return EntrySpec(reference=f"execution:{execution.pk}", kind="execution",
                     description=f"Solana execution of quote {quote.pk}", legs=legs,
                     quote_id=quote.pk, user_id=quote.user_id, tx_hash=signature)


def _revenue_entry(*, quote: Quote, signature: str) -> EntrySpec:
    """The customer's payment is earned (a quote paid by a chain payment)."""
    total = int(quote.total_cost)
    return EntrySpec(reference=f"revenue:{quote.pk}", kind="revenue",
                     description=f"Quote {quote.pk} executed: the payment is earned",
                     legs=[Leg(_customer_funds_account(quote), quote.source_asset, total),
                           Leg(account_code("revenue", quote.source_chain, quote.source_asset),
                               quote.source_asset, -total)],
                     quote_id=quote.pk, user_id=quote.user_id, tx_hash=signature)


def _book_chain_outcome(*, execution: Execution, quote: Quote, outcome: ChainOutcome,
                        signature: str) -> None:
    entry = _chain_outcome_entry(execution=execution, quote=quote, outcome=outcome,
                                 signature=signature)
    if entry is not None:
        ledger_post(**vars(entry))


def execution_book_success(*, execution: Execution, quote: Quote, outcome: ChainOutcome,
                           signature: str, actor: str,
                           treasury_balance_lamports: int | None = None) -> None:
    """The landed, successful execution: quote executed, books, settlement, risk."""
    quote_transition(quote_id=quote.pk, quote=quote, to_status=QuoteStatus.EXECUTED, actor=actor,
                     expected_from={QuoteStatus.EXECUTING}, tx_hash=signature,
                     details={"execution_id": str(execution.pk),
                              "fee_lamports": str(outcome.fee_lamports),
                              "outflow_lamports": str(outcome.outflow_lamports)})
    _book_chain_outcome(execution=execution, quote=quote, outcome=outcome, signature=signature)
    # A balance-funded quote is earned from the user's lock (same `revenue:<quote>`
    # reference, so whichever entry comes first is the only one).
    if not (quote.pay_from_balance and balance_settle_quote(quote=quote, actor=actor)):
        ledger_post(**vars(_revenue_entry(quote=quote, signature=signature)))
    settlement_open(execution=execution, funding_payment=funding_payment_of(quote), actor=actor)
    # The chain's own post-transaction treasury balance, when the caller read it: the
    # breaker's hourly-outflow ratio then needs no ledger aggregate.
    breaker_record_execution_outcome(success=True, outflow_lamports=outcome.lamports_spent,
                                     quote=quote,
                                     treasury_balance_lamports=treasury_balance_lamports)


@dataclass(frozen=True)
class Landed:
    """One execution of a batch whose transaction landed and succeeded."""

    execution: Execution  # locked, with its quote (locked too) loaded
    outcome: ChainOutcome
    signature: str


def execution_book_successes(*, landed: list[Landed], actor: str,
                             treasury_balance_lamports: int) -> None:
    """`execution_book_success` for a batch, in the transaction that confirms them: the
    same rows, written a statement per kind instead of per execution. Quotes paid from a
    prepaid balance are not batched (the executor drives them one by one)."""
    if not landed:
        return
    for item in landed:
        if item.execution.quote.pay_from_balance:
            raise ValueError("a balance-funded quote is booked by execution_book_success")
    quote_transition_many(
        quotes=[item.execution.quote for item in landed], to_status=QuoteStatus.EXECUTED,
        actor=actor, expected_from={QuoteStatus.EXECUTING},
        details={item.execution.quote_id: {
            "execution_id": str(item.execution.pk),
            "fee_lamports": str(item.outcome.fee_lamports),
            "outflow_lamports": str(item.outcome.outflow_lamports)} for item in landed},
        tx_hashes={item.execution.quote_id: item.signature for item in landed})
    entries: list[EntrySpec] = []
    for item in landed:
        quote = item.execution.quote
        chain_entry = _chain_outcome_entry(execution=item.execution, quote=quote,
                                           outcome=item.outcome, signature=item.signature)
        if chain_entry is not None:
            entries.append(chain_entry)
        entries.append(_revenue_entry(quote=quote, signature=item.signature))
    ledger_post_many(entries)
    payments = funding_payments_of([item.execution.quote_id for item in landed])
    settlement_open_many(opened=[(item.execution, payments.get(item.execution.quote_id))
                                 for item in landed], actor=actor)
    breaker_record_execution_successes(
        outflows={item.execution.quote_id: item.outcome.lamports_spent for item in landed},
        treasury_balance_lamports=treasury_balance_lamports)


def funding_payments_of(quote_ids: list[Any]) -> dict[Any, FundingPayment]:
    """`funding_payment_of` for many quotes in one query (the earliest matching payment)."""
    found: dict[Any, FundingPayment] = {}
    # By quote alone, the status checked here: given both, the planner may AND in the status
    # index, whose matched entries grow with every payment ever taken (seen: 2 ms a batch
    # after 2,000 payments, with statistics older than the rows). A quote has one or two.
    paying = {FundingPaymentStatus.MATCHED, FundingPaymentStatus.OVERPAID}
    for payment in FundingPayment.objects.filter(quote_id__in=quote_ids).order_by("received_at"):
        if payment.status in paying:
            found.setdefault(payment.quote_id, payment)
    return found


def execution_book_failure(*, execution: Execution, quote: Quote, reason: str, message: str,
                           actor: str, outcome: ChainOutcome | None = None,
                           signature: str = "") -> None:
    """A failed execution: refund due to the user, reservation back, failure counted.

    `outcome` is given when a transaction landed with an error: its fee was charged.
    A quote still `committed` (refused by the risk limits before anything was reserved)
    has no reservation to release and no chain failure to count.
    """
    reserved = quote.status == QuoteStatus.EXECUTING
    if outcome is not None:
        _book_chain_outcome(execution=execution, quote=quote, outcome=outcome, signature=signature)
    details = {"execution_id": str(execution.pk), "fail_reason": reason, "error": message[:500]}
    quote_transition(quote_id=quote.pk, quote=quote, to_status=QuoteStatus.FAILED, actor=actor,
                     details=details, tx_hash=signature)
    if quote.pay_from_balance and balance_release_quote(quote=quote, actor=actor, reason=reason):
        pass  # the unlock is the refund: the balance service took the quote on to refunded
    else:
        _refund_payment(quote=quote, reason=reason, actor=actor, details=details)
    if reserved:
        risk_release_execution(quote=quote)
        breaker_record_execution_outcome(success=False, quote=quote)


def _refund_payment(*, quote: Quote, reason: str, actor: str, details: dict[str, str]) -> None:
    quote_transition(quote_id=quote.pk, quote=quote, to_status=QuoteStatus.REFUND_DUE,
                     actor=actor, details=details)
    payment = funding_payment_of(quote)
    if payment is not None:
        amount = min(int(quote.total_cost), int(payment.amount))
        ledger_post(reference=f"refund:execution:{quote.pk}", kind="refund_due",
                    description=f"Quote {quote.pk} failed ({reason}): the payment is owed back",
                    legs=[Leg(_customer_funds_account(quote), quote.source_asset, amount),
                          Leg(account_code("refunds_payable", quote.source_chain,
                                           quote.source_asset), quote.source_asset, -amount)],
                    quote_id=quote.pk, user_id=quote.user_id)
        refund_create(reason=REFUND_REASON, payment=payment, quote=quote, amount=amount,
                      destination=refund_destination(quote=quote, payment=payment), actor=actor)
    else:
        # Committed with neither a payment nor a balance lock: nothing to give back, and an
        # operator should look at how it was committed.
        logger.error("failed quote has no funding payment to refund",
                     extra={"quote_id": str(quote.pk)})
