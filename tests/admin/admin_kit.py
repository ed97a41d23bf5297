"""Back-office test data made through the real write paths: signed Stellar payments through
`payment_submit`, quote and execution state machines, the executor's booking of outcomes.
Used by the admin tests and by the screenshot script (docs/screenshots/take.py)."""

from __future__ import annotations

import itertools
import os
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone
from stellar_sdk import Keypair

from config.chains import LAMPORTS_PER_SOL
from execution.models import Execution, ExecutionStatus
from execution.services.outcomes import ChainOutcome, execution_book_failure, execution_book_success
from execution.services.transitions import execution_record_created, execution_transition, lock_execution
from quotes.models import Quote, QuoteStatus
from quotes.services.transitions import lock_quote, quote_transition
from settlement.ledger import Leg, account_code, ledger_post
from tests.factories import QuoteFactory
from tests.fakes.horizon import make_stellar_payment

_sequence = itertools.count(50_000)
ACTOR = "test:admin_kit"


def fake_signature() -> str:
    """A real-looking Solana signature (these executions never touch a chain)."""
    from solders.signature import Signature

    return str(Signature(os.urandom(64)))


def pay_stellar(*, treasury: str, amount: int, memo_id: int | str | None,
                payer: Keypair | None = None) -> Any:
    """A real signed Stellar payment, verified and booked by the funding service."""
    from settlement.services.funding import payment_submit

    envelope = make_stellar_payment(payer or Keypair.random(), treasury, int(amount),
                                    memo_id=int(memo_id) if memo_id is not None else None,
                                    sequence=next(_sequence))
    return payment_submit(chain="stellar", source="api", envelope_xdr=envelope)


def committed_quote(*, user: Any, treasury: str, **kwargs: Any) -> Quote:
    quote = QuoteFactory(user=user, payment_address=treasury, **kwargs)
    outcome = pay_stellar(treasury=treasury, amount=int(quote.total_cost), memo_id=quote.payment_memo)
    assert outcome.committed, outcome.status
    quote.refresh_from_db()
    return quote


def start_execution(quote: Quote, *, to: str = ExecutionStatus.SUBMITTED) -> Execution:
    """committed → executing, with an execution moved along pending → signed → submitted."""
    with transaction.atomic():
        locked = lock_quote(quote.pk)
        quote_transition(quote_id=locked.pk, quote=locked, to_status=QuoteStatus.EXECUTING,
                         actor=ACTOR, expected_from={QuoteStatus.COMMITTED})
        execution = Execution.objects.create(quote=locked)
        execution_record_created(execution=execution, actor=ACTOR, quote=locked)
        if to == ExecutionStatus.PENDING:
            return execution
        signature = fake_signature()
        execution_transition(execution=execution, to_status=ExecutionStatus.SIGNED, actor=ACTOR,
                             signature=signature, quote=locked,
                             fields={"signature": signature, "attempt_count": 1})
        if to == ExecutionStatus.SUBMITTED:
            execution_transition(execution=execution, to_status=ExecutionStatus.SUBMITTED,
                                 actor=ACTOR, signature=signature, quote=locked,
                                 fields={"submitted_at": timezone.now()})
    return execution


def finish_execution(execution: Execution, *, success: bool, fee: int = 5_000,
                     outflow: int | None = None) -> Execution:
    with transaction.atomic():
        execution = lock_execution(execution.pk)
        quote = lock_quote(execution.quote_id)
        if success:
            spent = int(quote.treasury_outflow_lamports) if outflow is None else outflow
            outcome = ChainOutcome(fee_lamports=fee, outflow_lamports=spent)
            execution_transition(execution=execution, to_status=ExecutionStatus.CONFIRMED,
                                 actor=ACTOR, signature=execution.signature, quote=quote,
                                 fields={"confirmed_at": timezone.now(), "fee_lamports": fee,
                                         "treasury_outflow_lamports": spent, "slot": 1234})
            execution_book_success(execution=execution, quote=quote, outcome=outcome,
                                   signature=execution.signature, actor=ACTOR)
        else:
            execution_transition(execution=execution, to_status=ExecutionStatus.FAILED,
                                 actor=ACTOR, quote=quote,
                                 fields={"fail_reason": "SIMULATION_FAILED",
                                         "error_message": "custom program error: 0x1"})
            execution_book_failure(execution=execution, quote=quote, reason="SIMULATION_FAILED",
                                   message="custom program error: 0x1", actor=ACTOR)
    return execution


def executed_quote(*, user: Any, treasury: str, **kwargs: Any) -> Quote:
    quote = committed_quote(user=user, treasury=treasury, **kwargs)
    finish_execution(start_execution(quote), success=True)
    quote.refresh_from_db()
    return quote


def failed_quote(*, user: Any, treasury: str, **kwargs: Any) -> Quote:
    quote = committed_quote(user=user, treasury=treasury, **kwargs)
    finish_execution(start_execution(quote), success=False)
    quote.refresh_from_db()
    return quote


def unmatched_payment(*, treasury: str, amount: int, memo_id: int = 4242) -> Any:
    """A payment whose memo matches no quote and no balance: held for an operator."""
    return pay_stellar(treasury=treasury, amount=amount, memo_id=memo_id).payment


def fund_inventory(sol: int = 1_000) -> None:
    """Book the treasury's SOL inventory (what the sandbox airdrop does at start-up)."""
    lamports = sol * LAMPORTS_PER_SOL
    with transaction.atomic():
        ledger_post(reference="test:inventory:solana:SOL", kind="inventory_funding",
                    legs=[Leg(account_code("treasury", "solana", "SOL"), "SOL", lamports),
                          Leg(account_code("inventory_funding", "solana", "SOL"), "SOL", -lamports)])


XLM = 10**7
BIG_XLM = Decimal(20_000 * XLM)  # above the default $1000 withdrawal approval threshold


def held_withdrawal(*, user: Any, treasury: str, amount: int = int(BIG_XLM)) -> Any:
    """A withdrawal above the approval threshold, waiting for an operator: the user gets a
    verified Stellar wallet and a prepaid balance from a real deposit first."""
    from settlement.services.withdrawals import withdrawal_request
    from tests.factories import WalletFactory

    payer = Keypair.random()
    WalletFactory(user=user, chain="stellar", address=payer.public_key)
    if user.deposit_memo is None:
        user.deposit_memo = 10**9 + next(_sequence)
        user.save(update_fields=["deposit_memo"])
    outcome = pay_stellar(treasury=treasury, amount=amount, memo_id=user.deposit_memo, payer=payer)
    assert outcome.status == "credited", outcome.status
    return withdrawal_request(user=user, chain="stellar", amount=amount)
