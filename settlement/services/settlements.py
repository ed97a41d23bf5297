"""Settlements: one per executed quote, matching the execution with the funding it used
(seed 004's lifecycle: pending → verified → settled, or → failed | timed_out).

`settlement_open` is called by the executor in the transaction that records a successful
execution. Verification against the source chain, settling, the stuck-settlement finder and
the rest of the lifecycle build on the rows created here.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction

from execution.models import Execution
from risk.audit import audit_record
from settlement.models import FundingPayment, Settlement, SettlementStatus, SettlementTransition


def settlement_open(*, execution: Execution, funding_payment: FundingPayment | None = None,
                    actor: str = "system:execution") -> Settlement:
    """Create the pending settlement of an execution, once (a retry gets the first row)."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("settlement_open must run inside transaction.atomic()")
    existing = Settlement.objects.filter(execution=execution).first()
    if existing is not None:
        return existing
    quote = execution.quote
    try:
        with transaction.atomic():  # savepoint: a concurrent twin must not poison the caller
            settlement = Settlement.objects.create(
                execution=execution,
                funding_payment=funding_payment,
                status=SettlementStatus.PENDING,
                source_chain=quote.source_chain,
                source_tx_hash=funding_payment.tx_hash if funding_payment else "",
                source_amount=quote.total_cost,
            )
    except IntegrityError:
        return Settlement.objects.get(execution=execution)
    SettlementTransition.objects.create(
        settlement=settlement, from_status="", to_status=SettlementStatus.PENDING, actor=actor,
        details={"execution_id": str(execution.pk), "quote_id": str(quote.pk)},
        tx_hash=settlement.source_tx_hash,
    )
    audit_record(event_type="settlement_pending", actor=actor, entity_type="settlement",
                 entity_id=settlement.pk, user_id=quote.user_id,
                 details={"execution_id": str(execution.pk), "quote_id": str(quote.pk),
                          "source_chain": quote.source_chain,
                          "source_tx_hash": settlement.source_tx_hash,
                          "source_amount": str(quote.total_cost)})
    return settlement
