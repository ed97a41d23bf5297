"""Paying an approved refund out of the treasury: the same exactly-once payout as a
withdrawal (settlement.payouts), driven through the refund's own state machine
(settlement.services.refunds: approved → sent → completed | failed).

    approved  sign once; `refund_mark(sent)` commits the tx hash and signed bytes BEFORE
              anything is sent
    sent      submit (sandbox: the signed bytes are verified, that is the submission); a
              retry asks the chain about the stored hash first, re-sends the same bytes,
              and gives up (failed) only when the chain provably cannot include them
    completed `refund_complete` pays refunds_payable out of the treasury; the network fee
              the payout cost is booked beside it (`refund_fee:<id>`: network_fees ← treasury)

Payouts of one chain run one at a time (they share the treasury's sequence / nonce), under
the same lock as withdrawals.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from config.errors import Conflict, NotFound
from quotes.models import QuoteStatus
from quotes.services.transitions import lock_quote, quote_transition
from settlement.ledger import Leg, account_code
from settlement.models import Refund, RefundStatus
from settlement.payouts import (
    PayoutChain,
    PayoutInvalid,
    PayoutResult,
    SignedPayout,
    payout_chain,
    payout_details_from_signed,
    payout_lock,
)
from settlement.services.balances import post_once
from settlement.services.refunds import refund_complete, refund_mark

logger = logging.getLogger(__name__)
R = RefundStatus
# The reason the executor gives the refund of a quote whose execution failed.
EXECUTION_FAILED_REASON = "execution_failed"


def _signed(refund: Refund) -> SignedPayout:
    return SignedPayout(tx_hash=refund.tx_hash, signed_transaction=refund.signed_transaction,
                        details=payout_details_from_signed(refund.chain, refund.signed_transaction))


def _book_fee(refund: Refund, fee: int) -> None:
    if fee <= 0:
        return
    asset = refund.asset
    with transaction.atomic():
        Refund.objects.select_for_update().get(pk=refund.pk)  # the refund's own lock
        post_once(reference=f"refund_fee:{refund.pk}", kind="network_fee",
                  description=f"Network fee of refund {refund.pk}'s payout",
                  legs=[Leg(account_code("network_fees", refund.chain, asset), asset, fee),
                        Leg(account_code("treasury", refund.chain, asset), asset, -fee)],
                  quote_id=refund.quote_id, user_id=refund.user_id, tx_hash=refund.tx_hash)


def _finish(refund: Refund, result: PayoutResult, *, actor: str) -> Refund:
    if result.state == "success":
        refund = refund_complete(refund_id=refund.pk, tx_hash=refund.tx_hash, actor=actor)
        _book_fee(refund, result.fee)
        _quote_refunded(refund, actor=actor)
        return refund
    if result.state == "failed":
        refund = refund_mark(refund_id=refund.pk, to_status=R.FAILED, actor=actor,
                             note=result.reason[:500])
        _book_fee(refund, result.fee)
        return refund
    logger.warning("refund payout outcome unknown; will look again",
                   extra={"refund_id": str(refund.pk), "reason": result.reason})
    return refund


def _quote_refunded(refund: Refund, *, actor: str) -> None:
    """A failed quote's own refund reached the payer: the quote's story ends (refund_due →
    refunded). Refunds of an excess, a late or a duplicate payment leave the quote alone."""
    if refund.quote_id is None or refund.reason != EXECUTION_FAILED_REASON:
        return
    with transaction.atomic():
        quote = lock_quote(refund.quote_id)
        if quote.status == QuoteStatus.REFUND_DUE:
            quote_transition(quote_id=quote.pk, quote=quote, to_status=QuoteStatus.REFUNDED,
                             actor=actor, tx_hash=refund.tx_hash,
                             details={"refund_id": str(refund.pk), "amount": str(int(refund.amount))})


def _send(refund: Refund, payouts: PayoutChain, *, actor: str, retry: bool) -> Refund:
    signed = _signed(refund)
    try:
        payouts.verify_offline(signed, destination=refund.destination, amount=int(refund.amount))
    except PayoutInvalid as exc:
        logger.error("stored refund payout invalid", extra={"refund_id": str(refund.pk),
                                                            "error": str(exc)})
        return refund  # never send bytes that do not pay exactly this refund
    if retry:
        result = payouts.status(signed)
        if result.state == "not_found":
            if payouts.provably_dead(signed):
                return _finish(refund, PayoutResult("failed", reason="payout expired unsent"),
                               actor=actor)
            result = payouts.submit(signed)
    else:
        result = payouts.submit(signed)
    return _finish(refund, result, actor=actor)


def refund_pay_out(*, refund_id: Any, actor: str) -> Refund:
    """Pay an approved refund to its destination (or carry a sent one to its end).
    Idempotent: signs at most once per approval, completes at most once."""
    refund = Refund.objects.filter(pk=refund_id).first()
    if refund is None:
        raise NotFound("Refund not found", code="REFUND_NOT_FOUND", status=404)
    if refund.status == R.DUE:
        raise Conflict("An operator must approve this refund first", code="INVALID_STATE_TRANSITION",
                       details={"status": refund.status})
    if refund.status not in (R.APPROVED, R.SENT):
        return refund
    payouts = payout_chain(refund.chain)
    with payout_lock(refund.chain):
        refund.refresh_from_db()
        if refund.status == R.APPROVED:
            prepared = payouts.prepare()
            signed = payouts.sign(destination=refund.destination, amount=int(refund.amount),
                                  unique_id=f"refund:{refund.pk}", prepared=prepared)
            with transaction.atomic():
                locked = Refund.objects.select_for_update().get(pk=refund.pk)
                if locked.status != R.APPROVED:
                    return locked  # a twin signed and sent it first
                refund = refund_mark(refund_id=refund.pk, to_status=R.SENT, actor=actor,
                                     tx_hash=signed.tx_hash,
                                     signed_transaction=signed.signed_transaction)
            return _send(refund, payouts, actor=actor, retry=False)
        if refund.status == R.SENT:
            return _send(refund, payouts, actor=actor, retry=True)
    return refund


def refunds_in_flight_resolve(*, chain: str, payouts: PayoutChain, actor: str = "system:refunds") -> None:
    """Carry sent refunds of `chain` to their end (caller holds the chain's payout lock):
    a new payout must not take the sequence / nonce one of them may still land with."""
    for refund in Refund.objects.filter(chain=chain, status=R.SENT).order_by("updated_at"):
        _send(refund, payouts, actor=actor, retry=True)
