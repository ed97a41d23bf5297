"""Refund records: money we owe back, exactly once per payment and reason, and their states.

    due → approved → sent → completed
                          ↘ failed → approved (retry)
    approved → completed   (an operator paid it out by hand and gives the tx hash)

A refund's amount is moved to `refunds_payable:<chain>:<asset>` by the entry that created
the debt (the payment's own entry for underpaid / overpaid / late / duplicate payments).
Completing a refund pays that liability out of the treasury: debit refunds_payable,
credit treasury. Signing the payout is for later; the record is complete without it.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from config.errors import Conflict, InvalidRequest, NotFound
from config.transitions import refuse_unless_allowed, require_transaction
from quotes.models import Quote
from risk.audit import audit_record
from settlement.ledger import Leg, account_code, ledger_post
from settlement.models import FundingPayment, FundingPaymentStatus, Refund, RefundStatus

R = RefundStatus
REFUND_ALLOWED: dict[str, set[str]] = {
    R.DUE: {R.APPROVED},
    R.APPROVED: {R.SENT, R.COMPLETED},
    R.SENT: {R.COMPLETED, R.FAILED},
    R.FAILED: {R.APPROVED},
    R.COMPLETED: set(),
    R.CANCELLED: set(),
}


class InvalidRefundTransition(Conflict):
    code = "INVALID_STATE_TRANSITION"


def refund_destination(*, quote: Quote | None, payment: FundingPayment) -> str:
    """Where money goes back: the quote's `refund_to`, else whoever paid."""
    if quote is not None and quote.refund_to:
        return quote.refund_to
    return payment.from_address


def refund_create(*, reason: str, payment: FundingPayment, quote: Quote | None, amount: int,
                  destination: str, actor: str = "system") -> Refund:
    """Record that `amount` of `payment` is owed back. Once per (payment, reason): a replay
    or a retried task gets the first record back. Call inside the transaction that books
    the matching `refunds_payable` credit, so the record and the debt commit together."""
    require_transaction("refund_create")
    if amount <= 0 or amount > int(payment.amount):
        raise InvalidRequest("A refund must be positive and at most the payment",
                             details={"amount": str(amount), "payment_amount": str(payment.amount)})
    try:
        with transaction.atomic():  # savepoint: a duplicate must not poison the caller
            refund = Refund.objects.create(
                reason=reason, chain=payment.chain, asset=payment.asset, amount=amount,
                destination=destination, user_id=payment.user_id,
                quote=quote, funding_payment=payment,
            )
    except IntegrityError:
        existing = Refund.objects.filter(funding_payment=payment, reason=reason).first()
        if existing is None:
            raise
        return existing
    audit_record(event_type="refund_due", actor=actor, entity_type="refund", entity_id=refund.pk,
                 user_id=payment.user_id,
                 details={"reason": reason, "amount": str(amount), "asset": payment.asset,
                          "chain": payment.chain, "destination": destination,
                          "funding_payment_id": str(payment.pk),
                          "quote_id": str(quote.pk) if quote else None})
    return refund


def _lock_refund(refund_id: Any) -> Refund:
    try:
        return Refund.objects.select_for_update().get(pk=refund_id)
    except Refund.DoesNotExist as exc:
        raise NotFound("Refund not found", code="REFUND_NOT_FOUND", status=404) from exc


def _move(refund: Refund, to_status: str) -> str:
    previous = refund.status
    refuse_unless_allowed(InvalidRefundTransition, "Refund", previous, to_status,
                          REFUND_ALLOWED.get(previous, set()))
    refund.status = to_status
    return previous


@transaction.atomic
def refund_mark(*, refund_id: Any, to_status: str, actor: str, tx_hash: str = "",
                signed_transaction: str = "", note: str = "") -> Refund:
    """Approve, mark sent (with the payout's tx hash and signed bytes) or mark failed.
    Completion posts to the ledger and has its own function, `refund_complete`."""
    if to_status == R.COMPLETED:
        raise InvalidRequest("Use refund_complete to complete a refund")
    refund = _lock_refund(refund_id)
    previous = _move(refund, to_status)
    update_fields = ["status", "updated_at"]
    if to_status == R.APPROVED:
        refund.approved_by = actor
        update_fields.append("approved_by")
    if to_status == R.SENT:
        if not tx_hash:
            raise InvalidRequest("A sent refund needs the payout's tx hash")
        refund.tx_hash, refund.signed_transaction = tx_hash, signed_transaction
        update_fields += ["tx_hash", "signed_transaction"]
    refund.save(update_fields=update_fields)
    audit_record(event_type=f"refund_{to_status}", actor=actor, entity_type="refund",
                 entity_id=refund.pk, user_id=refund.user_id,
                 details={"from": previous, "to": to_status, "tx_hash": tx_hash, "note": note})
    return refund


@transaction.atomic
def refund_complete(*, refund_id: Any, tx_hash: str, actor: str) -> Refund:
    """The payout landed: settle the debt out of the treasury, once."""
    if not tx_hash:
        raise InvalidRequest("A completed refund needs the payout's tx hash")
    refund = _lock_refund(refund_id)
    previous = _move(refund, R.COMPLETED)
    refund.tx_hash = tx_hash
    refund.save(update_fields=["status", "tx_hash", "updated_at"])
    amount = int(refund.amount)
    ledger_post(
        reference=f"refund:{refund.pk}", kind="refund_paid",
        description=f"Refund ({refund.reason}) paid to {refund.destination}",
        legs=[Leg(account_code("refunds_payable", refund.chain, refund.asset), refund.asset, amount),
              Leg(account_code("treasury", refund.chain, refund.asset), refund.asset, -amount)],
        quote_id=refund.quote_id, user_id=refund.user_id, tx_hash=tx_hash,
    )
    audit_record(event_type="refund_completed", actor=actor, entity_type="refund",
                 entity_id=refund.pk, user_id=refund.user_id,
                 details={"from": previous, "to": R.COMPLETED, "tx_hash": tx_hash,
                          "amount": str(amount), "asset": refund.asset})
    return refund


@transaction.atomic
def unmatched_payment_refund(*, payment_id: Any, actor: str, destination: str = "") -> Refund:
    """An operator's resolution of an unclaimed payment: owe it back to the payer (or to
    `destination`). Moves it from unmatched_deposits to refunds_payable."""
    payment = FundingPayment.objects.select_for_update().filter(pk=payment_id).first()
    if payment is None:
        raise NotFound("Payment not found", code="PAYMENT_NOT_FOUND", status=404)
    if payment.status != FundingPaymentStatus.UNMATCHED or payment.resolved_at is not None:
        raise Conflict("Only an unresolved unmatched payment can be refunded this way",
                       details={"status": payment.status,
                                "resolved_at": payment.resolved_at.isoformat()
                                if payment.resolved_at else None})
    amount = int(payment.amount)
    refund = refund_create(reason="unmatched", payment=payment, quote=None, amount=amount,
                           destination=destination or payment.from_address, actor=actor)
    ledger_post(
        reference=f"unmatched_refund:{payment.chain}:{payment.tx_hash}", kind="unmatched_refund_due",
        description="Unclaimed payment owed back to its payer",
        legs=[Leg(account_code("unmatched_deposits", payment.chain, payment.asset), payment.asset, amount),
              Leg(account_code("refunds_payable", payment.chain, payment.asset), payment.asset, -amount)],
        tx_hash=payment.tx_hash,
    )
    payment.resolved_at = timezone.now()
    payment.save(update_fields=["resolved_at"])
    return refund
