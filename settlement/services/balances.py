"""Prepaid balances: locking a user's balance for a quote, and what execution makes of it.

A user's money at rest is three ledger accounts per asset (liabilities, so credits and
negative in the books' debit-positive sign):

    user_balance:<user>:<asset>         available: free to spend or withdraw
    user_locked:<user>:<asset>          locked for a committed quote
    withdrawals_payable:<user>:<asset>  requested withdrawals not yet paid out

`UserBalance` is a cached projection of those postings, updated in the SAME transaction as
each posting, with `F()` expressions under the row lock:

    UserBalance.amount == -(user_balance + user_locked + withdrawals_payable)
    UserBalance.locked == -(user_locked + withdrawals_payable)

Reconciliation proves those equalities every run (`selectors.user_balance_disagreements`);
PostgreSQL CHECKs (amount ≥ 0, 0 ≤ locked ≤ amount) make an overdraw impossible even if a
code path forgot to check.

Moves owned here, each one balanced journal entry posted once per reference:

    balance_lock:<quote>     commit from balance   available → locked
    revenue:<quote>          execution succeeded   locked → revenue (shares the executor's
                                                   revenue reference: a quote earns once)
    balance_release:<quote>  execution failed      locked → available

Lock order is always quote row, then balance row (as in every payment commit), so a commit
and a concurrent withdrawal of the same user cannot deadlock.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from config.chains import NATIVE_ASSET, NATIVE_DECIMALS, SOURCE_CHAINS, Chain, format_amount
from config.errors import Conflict, InvalidRequest, ServiceError
from config.events import publish_after_commit
from config.transitions import require_transaction
from execution.services.enqueue import execution_enqueue
from quotes.errors import QuoteNotFound, QuoteNotPending
from quotes.models import Quote, QuoteStatus
from quotes.services.transitions import quote_transition
from risk.audit import audit_record
from settlement.ledger import Leg, account_code, ledger_post
from settlement.models import JournalEntry, UserBalance

logger = logging.getLogger(__name__)

BALANCE_ACTOR = "balance"
SETTLE_KIND = "balance_settle"


class InsufficientFunds(ServiceError):
    code, status, default_message = "INSUFFICIENT_FUNDS", 400, "Available balance is too low"


class QuoteExpired(ServiceError):
    code, status, default_message = "QUOTE_EXPIRED", 400, "The quote has expired"


class QuoteAlreadyExecuted(ServiceError):
    code, status, default_message = "QUOTE_ALREADY_EXECUTED", 409, "The quote was already executed"


# -- accounts and the projection --------------------------------------------------------------


@dataclass(frozen=True)
class UserAccounts:
    """The ledger account codes holding one user's money in one asset."""

    available: str
    locked: str
    withdrawing: str


def user_accounts(*, user_id: Any, asset: str) -> UserAccounts:
    scope = str(user_id)
    return UserAccounts(available=account_code("user_balance", scope, asset),
                        locked=account_code("user_locked", scope, asset),
                        withdrawing=account_code("withdrawals_payable", scope, asset))


def balance_chain_check(chain: str) -> str:
    if chain not in SOURCE_CHAINS:
        raise InvalidRequest("Prepaid balances exist on stellar and near",
                             details={"field": "chain", "chain": str(chain)[:16]})
    return str(chain)


def lock_balance(*, user_id: Any, chain: str) -> UserBalance:
    """The user's balance row on `chain`, created empty if missing, locked for the rest of
    the transaction. Every read-decide-write of a balance starts here."""
    require_transaction("lock_balance")
    asset = NATIVE_ASSET[Chain(balance_chain_check(chain))]
    # ON CONFLICT DO NOTHING: two first-time writers for one user both end up on one row.
    UserBalance.objects.bulk_create([UserBalance(user_id=user_id, chain=chain, asset=asset)],
                                    ignore_conflicts=True)
    return UserBalance.objects.select_for_update().get(user_id=user_id, chain=chain)


def balance_apply(*, balance: UserBalance, amount_delta: int = 0, locked_delta: int = 0) -> None:
    """Move the projection with the posting that justifies it (same transaction, row locked).
    F() keeps concurrent writers additive; the CHECKs refuse a negative or over-locked row."""
    updates: dict[str, Any] = {"updated_at": timezone.now()}
    # Decimal, not int: bound server-side (config.prepared), Django sends a bare int in an
    # expression as int4, and a yoctoNEAR amount does not fit.
    if amount_delta:
        updates["amount"] = F("amount") + Decimal(amount_delta)
    if locked_delta:
        updates["locked"] = F("locked") + Decimal(locked_delta)
    UserBalance.objects.filter(pk=balance.pk).update(**updates)
    balance.refresh_from_db(fields=["amount", "locked", "updated_at"])


def balance_view(balance: UserBalance) -> dict[str, Any]:
    """A balance as the API and events show it: strings in the smallest unit, plus display."""
    decimals = NATIVE_DECIMALS[balance.asset]
    total, locked = int(balance.amount), int(balance.locked)
    return {
        "chain": balance.chain,
        "asset": balance.asset,
        "decimals": decimals,
        "total": str(total),
        "locked": str(locked),
        "available": str(total - locked),
        "display": {"total": format_amount(total, decimals),
                    "locked": format_amount(locked, decimals),
                    "available": format_amount(total - locked, decimals)},
    }


def balance_event(balance: UserBalance, *, reason: str, reference: str = "") -> dict[str, Any]:
    return {"event": "balance.updated", **balance_view(balance), "reason": reason,
            "reference": reference, "at": timezone.now().isoformat()}


def balance_publish(*, balance: UserBalance, reason: str, reference: str = "") -> None:
    """`balance.updated` to the user's stream, after commit (a rollback publishes nothing).
    Every write path that changes a balance calls this (deposits included)."""
    publish_after_commit(event=balance_event(balance, reason=reason, reference=reference),
                         user_id=balance.user_id)


def post_once(*, reference: str, kind: str, legs: list[Leg], description: str,
              quote_id: Any = None, user_id: Any = None, tx_hash: str = "") -> bool:
    """Post an entry unless its reference is already booked; True when this call booked it.

    Callers hold the row lock that every poster of this reference takes (the quote's or the
    withdrawal's), so the existence check and the insert cannot interleave with a twin's:
    the projection then moves exactly when the books do.
    """
    if JournalEntry.objects.filter(reference=reference).exists():
        return False
    ledger_post(reference=reference, kind=kind, legs=legs, description=description,
                quote_id=quote_id, user_id=user_id, tx_hash=tx_hash)
    return True


# -- paying a quote from the balance ----------------------------------------------------------


def _lock_reference(quote_id: Any) -> str:
    return f"balance_lock:{quote_id}"


def _release_reference(quote_id: Any) -> str:
    return f"balance_release:{quote_id}"


def _revenue_reference(quote_id: Any) -> str:
    # The executor earns a payment-funded quote under the same reference, so a quote can
    # never be earned twice, whichever path gets there first.
    return f"revenue:{quote_id}"


def quote_is_balance_funded(*, quote_id: Any) -> bool:
    """Whether the quote was committed by locking the user's prepaid balance."""
    return JournalEntry.objects.filter(reference=_lock_reference(quote_id)).exists()


def _lock_own_quote(*, user: Any, quote_id: Any) -> Quote:
    try:
        quote_uuid = uuid.UUID(str(quote_id))
    except (TypeError, ValueError):
        raise QuoteNotFound(details={"quote_id": str(quote_id)[:64]}) from None
    quote = Quote.objects.select_for_update().filter(pk=quote_uuid, user=user).first()
    if quote is None:  # someone else's quote is indistinguishable from a missing one
        raise QuoteNotFound(details={"quote_id": str(quote_uuid)})
    return quote


def quote_pay_from_balance(*, user: Any, quote_id: Any) -> Quote:
    """Commit a pending quote with the user's prepaid balance on its source chain.

    Locks the quote then the balance, checks available ≥ total_cost, moves that much
    available → locked (`balance_lock:<quote>`), commits the quote (actor "balance") and,
    after commit, queues its execution exactly like a verified payment does.
    Raises QUOTE_NOT_FOUND, QUOTE_EXPIRED, QUOTE_NOT_PENDING / QUOTE_ALREADY_EXECUTED,
    INSUFFICIENT_FUNDS.
    """
    with transaction.atomic():
        quote = _lock_own_quote(user=user, quote_id=quote_id)
        if quote.status == QuoteStatus.EXECUTED:
            raise QuoteAlreadyExecuted(details={"status": quote.status})
        if quote.status != QuoteStatus.PENDING:
            raise QuoteNotPending("Only a pending quote can be paid", details={"status": quote.status})
        if quote.is_expired:
            raise QuoteExpired(details={"expires_at": quote.expires_at.isoformat()})
        balance = lock_balance(user_id=user.pk, chain=quote.source_chain)
        total = int(quote.total_cost)
        if balance.available < total:
            raise InsufficientFunds(details={"chain": balance.chain, "asset": balance.asset,
                                             "available": str(balance.available),
                                             "required": str(total)})
        accounts = user_accounts(user_id=user.pk, asset=quote.source_asset)
        reference = _lock_reference(quote.pk)
        ledger_post(reference=reference, kind="balance_lock",
                    description=f"Prepaid balance locked for quote {quote.pk}",
                    legs=[Leg(accounts.available, quote.source_asset, total),
                          Leg(accounts.locked, quote.source_asset, -total)],
                    quote_id=quote.pk, user_id=user.pk)
        balance_apply(balance=balance, locked_delta=total)
        if not quote.pay_from_balance:
            # The executor earns a balance-funded quote from the lock, not from customer funds.
            quote.pay_from_balance = True
            quote.save(update_fields=["pay_from_balance", "updated_at"])
        quote_transition(quote_id=quote.pk, quote=quote, to_status=QuoteStatus.COMMITTED,
                         actor=BALANCE_ACTOR, expected_from={QuoteStatus.PENDING},
                         details={"paid_from": "balance", "amount": str(total),
                                  "asset": quote.source_asset})
        audit_record(event_type="balance_locked", actor=f"user:{user.pk}", entity_type="quote",
                     entity_id=quote.pk, user_id=user.pk,
                     details={"amount": str(total), "asset": quote.source_asset,
                              "chain": quote.source_chain,
                              "available_after": str(balance.available)})
        balance_publish(balance=balance, reason="quote_committed", reference=str(quote.pk))
        execution_enqueue([quote.pk])
    return quote


def balance_settle_quote(*, quote: Quote, actor: str = "system:execution") -> bool:
    """The balance-funded quote executed: its locked funds are earned (locked → revenue).

    Call in the executor's success transaction BEFORE it books revenue from customer funds:
    both use the reference `revenue:<quote>`, so after this the executor's own revenue post
    is a no-op. Returns False (nothing done) for a quote that was not paid from a balance.
    Idempotent: a second call returns True and books nothing.
    """
    require_transaction("balance_settle_quote")
    if not quote_is_balance_funded(quote_id=quote.pk):
        return False
    locked_quote = Quote.objects.select_for_update().get(pk=quote.pk)  # quote, then balance
    if JournalEntry.objects.filter(reference=_release_reference(quote.pk)).exists():
        raise Conflict("This quote's balance lock was already released",
                       code="INVALID_STATE_TRANSITION", details={"quote_id": str(quote.pk)})
    earned = JournalEntry.objects.filter(reference=_revenue_reference(quote.pk)).first()
    if earned is not None:
        if earned.kind != SETTLE_KIND:
            # Revenue was booked from customer funds although the quote was paid from the
            # balance: the lock stays, and reconciliation reports customer funds < 0.
            logger.error("balance-funded quote earned from customer funds",
                         extra={"quote_id": str(quote.pk), "entry": str(earned.pk)})
        return True
    balance = lock_balance(user_id=locked_quote.user_id, chain=locked_quote.source_chain)
    total = int(locked_quote.total_cost)
    asset = locked_quote.source_asset
    accounts = user_accounts(user_id=locked_quote.user_id, asset=asset)
    ledger_post(reference=_revenue_reference(quote.pk), kind=SETTLE_KIND,
                description=f"Quote {quote.pk} executed: locked balance earned",
                legs=[Leg(accounts.locked, asset, total),
                      Leg(account_code("revenue", locked_quote.source_chain, asset), asset, -total)],
                quote_id=quote.pk, user_id=locked_quote.user_id)
    balance_apply(balance=balance, amount_delta=-total, locked_delta=-total)
    audit_record(event_type="balance_debited", actor=actor, entity_type="quote", entity_id=quote.pk,
                 user_id=locked_quote.user_id,
                 details={"amount": str(total), "asset": asset, "chain": locked_quote.source_chain})
    balance_publish(balance=balance, reason="quote_executed", reference=str(quote.pk))
    return True


def balance_release_quote(*, quote: Quote, actor: str = "system:execution",
                          reason: str = "") -> bool:
    """The balance-funded quote failed: its locked funds become available again.

    Call in the executor's failure transaction after it moved the quote to failed (or
    refund_due): the unlock IS the refund, so the quote is taken on to `refunded` here and
    no Refund record is needed. Returns False for a quote not paid from a balance.
    Idempotent; refuses (409) a quote whose lock was already earned.
    """
    require_transaction("balance_release_quote")
    if not quote_is_balance_funded(quote_id=quote.pk):
        return False
    locked_quote = Quote.objects.select_for_update().get(pk=quote.pk)
    earned = JournalEntry.objects.filter(reference=_revenue_reference(quote.pk),
                                         kind=SETTLE_KIND).exists()
    if earned:
        raise Conflict("This quote's locked balance was already earned",
                       code="INVALID_STATE_TRANSITION", details={"quote_id": str(quote.pk)})
    balance = lock_balance(user_id=locked_quote.user_id, chain=locked_quote.source_chain)
    total = int(locked_quote.total_cost)
    asset = locked_quote.source_asset
    accounts = user_accounts(user_id=locked_quote.user_id, asset=asset)
    released = post_once(reference=_release_reference(quote.pk), kind="balance_release",
                         description=f"Quote {quote.pk} failed: locked balance released",
                         legs=[Leg(accounts.locked, asset, total),
                               Leg(accounts.available, asset, -total)],
                         quote_id=quote.pk, user_id=locked_quote.user_id)
    if released:
        balance_apply(balance=balance, locked_delta=-total)
        audit_record(event_type="balance_released", actor=actor, entity_type="quote",
                     entity_id=quote.pk, user_id=locked_quote.user_id,
                     details={"amount": str(total), "asset": asset, "reason": reason})
        balance_publish(balance=balance, reason="quote_failed", reference=str(quote.pk))
    details = {"refunded_to": "prepaid balance", "amount": str(total), "asset": asset}
    if locked_quote.status == QuoteStatus.FAILED:
        quote_transition(quote_id=quote.pk, quote=locked_quote, to_status=QuoteStatus.REFUND_DUE,
                         actor=BALANCE_ACTOR, details=details)
    if locked_quote.status == QuoteStatus.REFUND_DUE:
        quote_transition(quote_id=quote.pk, quote=locked_quote, to_status=QuoteStatus.REFUNDED,
                         actor=BALANCE_ACTOR, details=details)
    # The caller's instance follows the row (it may be the very object the caller holds).
    quote.status = locked_quote.status
    return True
