"""An operator's resolution of an unmatched deposit: a verified payment whose memo matched
no quote and no balance, held in `unmatched_deposits:<chain>:<asset>` until someone looks.

Three ways out, each exactly once per payment (the payment row is locked, and only an
UNMATCHED payment with no `resolved_at` can be resolved):

- to a quote (`payment_resolve_unmatched(quote_id=...)`): the quote must be pending,
  unexpired, on the payment's chain and asset, and the payment must cover its total cost.
  The held money moves to `customer_funds` (any excess to `refunds_payable` with an
  `overpaid` refund record), the quote is committed through `quote_transition`, and the
  execution is enqueued after commit, exactly as if the memo had been right.
- to a user's prepaid balance (`payment_resolve_unmatched(user_id=...)`): the money moves
  to `user_balance:<user>:<asset>` and the `UserBalance` projection follows.
- back to the payer: `settlement.services.refunds.unmatched_payment_refund`.

An underpaid or late resolution is refused rather than guessed at: refund it instead.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from config.errors import Conflict, InvalidRequest, NotFound
from execution.services.enqueue import execution_enqueue
from quotes.models import Quote, QuoteStatus
from quotes.services.transitions import lock_quote, quote_transition
from risk.audit import audit_record
from settlement.ledger import Leg, account_code, ledger_post
from settlement.models import FundingPayment, FundingPaymentStatus
from settlement.services.balances import balance_apply, balance_publish, lock_balance, user_accounts
from settlement.services.refunds import refund_create, refund_destination
from users.models import User

P = FundingPaymentStatus


def _lock_unmatched(payment_id: Any) -> FundingPayment:
    payment = FundingPayment.objects.select_for_update().filter(pk=payment_id).first()
    if payment is None:
        raise NotFound("Payment not found", code="PAYMENT_NOT_FOUND", status=404)
    if payment.status != P.UNMATCHED or payment.resolved_at is not None:
        raise Conflict(f"Payment is {payment.status}"
                       + (", already resolved" if payment.resolved_at else "")
                       + "; only an unresolved unmatched payment can be resolved",
                       details={"status": payment.status})
    return payment


@transaction.atomic
def payment_resolve_unmatched(*, payment_id: Any, operator: str, quote_id: Any = None,
                              user_id: Any = None) -> FundingPayment:
    """Apply an unmatched payment to a quote or to a user's balance, once."""
    if (quote_id is None) == (user_id is None):
        raise InvalidRequest("Resolve to exactly one of a quote or a user's balance")
    payment = _lock_unmatched(payment_id)
    if quote_id is not None:
        return _resolve_to_quote(payment, quote_id=quote_id, operator=operator)
    return _resolve_to_balance(payment, user_id=user_id, operator=operator)


def _resolve_to_quote(payment: FundingPayment, *, quote_id: Any, operator: str) -> FundingPayment:
    try:
        quote = lock_quote(quote_id)
    except Quote.DoesNotExist as exc:
        raise NotFound("Quote not found", code="QUOTE_NOT_FOUND", status=404) from exc
    amount, due = int(payment.amount), int(quote.total_cost)
    if quote.source_chain != payment.chain or quote.source_asset != payment.asset:
        raise InvalidRequest(f"The quote is paid in {quote.source_asset} on {quote.source_chain}; "
                             f"this payment is {payment.asset} on {payment.chain}")
    if quote.status != QuoteStatus.PENDING:
        raise Conflict(f"The quote is {quote.status}, not pending: refund the payment instead",
                       details={"status": quote.status})
    if quote.is_expired:
        raise Conflict("The quote has expired: refund the payment instead",
                       code="QUOTE_EXPIRED", status=400)
    if amount < due:
        raise InvalidRequest("The payment does not cover the quote's total cost: refund it instead",
                             details={"amount": str(amount), "total_cost": str(due)})

    excess = amount - due
    payment.status = P.MATCHED if excess == 0 else P.OVERPAID
    payment.quote = quote
    payment.user_id = quote.user_id
    payment.resolved_at = timezone.now()
    payment.save(update_fields=["status", "quote", "user", "resolved_at"])
    quote_transition(quote_id=quote.pk, quote=quote, to_status=QuoteStatus.COMMITTED, actor=operator,
                     expected_from={QuoteStatus.PENDING}, tx_hash=payment.tx_hash,
                     details={"funding_payment_id": str(payment.pk), "resolved_by": operator,
                              "amount": str(amount), "total_cost": str(due)})
    chain, asset = payment.chain, payment.asset
    legs = [Leg(account_code("unmatched_deposits", chain, asset), asset, amount),
            Leg(account_code("customer_funds", chain, asset), asset, -due)]
    if excess:
        legs.append(Leg(account_code("refunds_payable", chain, asset), asset, -excess))
    ledger_post(reference=f"unmatched_resolve:{chain}:{payment.tx_hash}", kind="unmatched_resolved",
                description=f"Unmatched payment applied to quote {quote.pk} by {operator}",
                legs=legs, quote_id=quote.pk, user_id=quote.user_id, tx_hash=payment.tx_hash)
    if excess:
        refund_create(reason="overpaid", payment=payment, quote=quote, amount=excess,
                      destination=refund_destination(quote=quote, payment=payment), actor=operator)
    audit_record(event_type="payment_resolved", actor=operator, entity_type="funding_payment",
                 entity_id=payment.pk, user_id=quote.user_id,
                 details={"to": "quote", "quote_id": str(quote.pk), "amount": str(amount),
                          "excess_refunded": str(excess), "tx_hash": payment.tx_hash})
    execution_enqueue([quote.pk])
    return payment


def _resolve_to_balance(payment: FundingPayment, *, user_id: Any, operator: str) -> FundingPayment:
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        raise NotFound("User not found", code="USER_NOT_FOUND", status=404)
    amount, chain, asset = int(payment.amount), payment.chain, payment.asset
    balance = lock_balance(user_id=user.pk, chain=chain)
    if balance.asset != asset:
        raise InvalidRequest(f"Balances on {chain} are in {balance.asset}, not {asset}")
    payment.status = P.CREDITED
    payment.user_id = user.pk
    payment.resolved_at = timezone.now()
    payment.save(update_fields=["status", "user", "resolved_at"])
    reference = f"unmatched_resolve:{chain}:{payment.tx_hash}"
    ledger_post(reference=reference, kind="unmatched_resolved",
                description=f"Unmatched payment credited to a prepaid balance by {operator}",
                legs=[Leg(account_code("unmatched_deposits", chain, asset), asset, amount),
                      Leg(user_accounts(user_id=user.pk, asset=asset).available, asset, -amount)],
                user_id=user.pk, tx_hash=payment.tx_hash)
    balance_apply(balance=balance, amount_delta=amount)
    balance_publish(balance=balance, reason="deposit", reference=reference)
    audit_record(event_type="payment_resolved", actor=operator, entity_type="funding_payment",
                 entity_id=payment.pk, user_id=user.pk,
                 details={"to": "balance", "user_id": str(user.pk), "amount": str(amount),
                          "tx_hash": payment.tx_hash})
    return payment
