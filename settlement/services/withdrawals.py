"""Withdrawals: paying a user's available prepaid balance out to their verified wallet.

    pending_approval ──approve──▶ approved ──sign──▶ signed ──send──▶ submitted ──▶ completed
           └──reject──▶ rejected             (signed | submitted) ──▶ failed

Money, one balanced entry per step (see `balances` for the projection):

    request    withdrawal:<id>          user_balance → withdrawals_payable   (locked += amount)
    completed  payout:withdrawal:<id>   withdrawals_payable → treasury, fee → network_fees
                                        (amount -= amount, locked -= amount)
    rejected / failed  withdrawal_return:<id>  withdrawals_payable → user_balance (locked -= amount)
    a failed tx that still cost a fee   withdrawal_fee:<id>  treasury → network_fees

Overdraw is impossible twice over: the request locks the user's balance row and checks
available ≥ amount before moving it, and PostgreSQL's CHECK (locked ≤ amount) refuses any
row that would show more locked than owned, whatever the code did.

Exactly-once payout, like executions: the payout is signed ONCE and its signed bytes and
hash (UNIQUE) are committed before anything is sent; the row is marked `submitted` before
the send; a retry never signs again, it asks the chain about the stored hash and re-sends
the same bytes, and gives the money back only when the chain provably cannot include them
(Stellar: past the time bounds; NEAR: the key's nonce moved past ours). Payouts of one chain
run one at a time (a PostgreSQL advisory lock), because each consumes the treasury's next
sequence number / nonce.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from config.chains import NATIVE_ASSET, NATIVE_DECIMALS, Chain, format_amount
from config.errors import Conflict, Forbidden, InvalidRequest, NotFound, ServiceError
from config.events import publish_after_commit
from config.transitions import refuse_unless_allowed
from risk.audit import audit_record
from risk.selectors import breaker_is_open
from settlement.ledger import Leg, account_code
from settlement.models import Withdrawal, WithdrawalStatus
from settlement.payouts import (
    PayoutChain,
    PayoutInvalid,
    PayoutResult,
    SignedPayout,
    payout_chain,
    payout_lock,
)
from settlement.services.balances import (
    InsufficientFunds,
    balance_apply,
    balance_chain_check,
    balance_publish,
    lock_balance,
    post_once,
    user_accounts,
)
from users.models import User, Wallet

logger = logging.getLogger(__name__)

W = WithdrawalStatus
ALLOWED: dict[str, set[str]] = {
    W.PENDING_APPROVAL: {W.APPROVED, W.REJECTED},
    W.APPROVED: {W.SIGNED},
    W.SIGNED: {W.SUBMITTED, W.COMPLETED, W.FAILED},
    W.SUBMITTED: {W.COMPLETED, W.FAILED},
    W.COMPLETED: set(),
    W.FAILED: set(),
    W.REJECTED: set(),
}
FINAL = frozenset({W.COMPLETED, W.FAILED, W.REJECTED})
IN_FLIGHT = frozenset({W.SIGNED, W.SUBMITTED})
EXECUTE_TASK = "settlement.tasks_books.withdrawal_execute_task"


class TransactionLimitExceeded(ServiceError):
    code, status = "TRANSACTION_LIMIT_EXCEEDED", 400
    default_message = "The withdrawal exceeds the per-request limit"


class InvalidWithdrawalTransition(Conflict):
    code = "INVALID_STATE_TRANSITION"


class IdempotencyKeyReused(ServiceError):
    code, status = "IDEMPOTENCY_KEY_REUSED", 422
    default_message = "This request key was used for a different withdrawal"


# -- reading and moving one withdrawal --------------------------------------------------------


def withdrawal_event(withdrawal: Withdrawal, *, previous: str | None) -> dict[str, Any]:
    decimals = NATIVE_DECIMALS[withdrawal.asset]
    return {"event": "withdrawal.status", "withdrawal_id": str(withdrawal.pk),
            "status": withdrawal.status, "previous": previous, "chain": withdrawal.chain,
            "asset": withdrawal.asset, "amount": str(int(withdrawal.amount)),
            "amount_display": format_amount(int(withdrawal.amount), decimals),
            "destination": withdrawal.destination, "tx_hash": withdrawal.tx_hash,
            "at": timezone.now().isoformat()}


def _lock(withdrawal_id: Any) -> Withdrawal:
    try:
        return Withdrawal.objects.select_for_update().get(pk=withdrawal_id)
    except (Withdrawal.DoesNotExist, ValueError, TypeError):
        raise NotFound("Withdrawal not found", code="WITHDRAWAL_NOT_FOUND", status=404) from None


def _move(withdrawal: Withdrawal, to_status: str, *, actor: str, fields: dict[str, Any] | None = None,
          details: dict[str, Any] | None = None) -> str:
    """The one place a withdrawal's status changes (row locked by the caller)."""
    previous = withdrawal.status
    refuse_unless_allowed(InvalidWithdrawalTransition, "Withdrawal", previous, to_status,
                          ALLOWED[previous])
    withdrawal.status = to_status
    update_fields = ["status", "updated_at"]
    for name, value in (fields or {}).items():
        setattr(withdrawal, name, value)
        update_fields.append(name)
    withdrawal.save(update_fields=update_fields)
    audit_record(event_type=f"withdrawal_{to_status}", actor=actor, entity_type="withdrawal",
                 entity_id=withdrawal.pk, user_id=withdrawal.user_id,
                 details={"from": previous, "to": to_status, "amount": str(int(withdrawal.amount)),
                          "asset": withdrawal.asset, "tx_hash": withdrawal.tx_hash or "",
                          **(details or {})})
    publish_after_commit(event=withdrawal_event(withdrawal, previous=previous),
                         user_id=withdrawal.user_id)
    return previous


def _enqueue_execute(withdrawal_id: str) -> None:
    from django_q.tasks import async_task

    async_task(EXECUTE_TASK, withdrawal_id, task_name=f"withdrawal:{withdrawal_id}",
               group="withdrawals")


# -- request, approve, reject -----------------------------------------------------------------


def _usd_value(asset: str, amount: int) -> Decimal | None:
    """The amount in USD by the oracle, or None when no acceptable price is available."""
    from quotes.errors import PriceUnavailable
    from quotes.prices import price_feed

    try:
        price = price_feed().prices([asset])[asset].price
    except PriceUnavailable:
        return None
    return Decimal(amount).scaleb(-NATIVE_DECIMALS[asset]) * price


def _destination(user: User, chain: str) -> str:
    address = (Wallet.objects.filter(user=user, chain=chain).order_by("-verified_at")
               .values_list("address", flat=True).first())
    if address is None:
        raise InvalidRequest(f"Verify a {chain} wallet first: withdrawals go only to your own wallet",
                             code="NO_VERIFIED_WALLET", details={"chain": chain})
    return address


def withdrawal_request(*, user: User, chain: str, amount: int, request_key: str = "") -> Withdrawal:
    """Reserve `amount` of the user's available balance for a payout to their verified wallet.

    Above WITHDRAWAL_APPROVAL_THRESHOLD_USD (or when no price can value it) the withdrawal
    waits for an operator; otherwise it is queued for payout after commit. A repeated
    `request_key` returns the first withdrawal (422 if it asked for something else).
    Raises INVALID_REQUEST, NO_VERIFIED_WALLET, TRANSACTION_LIMIT_EXCEEDED, INSUFFICIENT_FUNDS.
    """
    chain = balance_chain_check(chain)
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidRequest("amount must be a positive integer in the smallest unit",
                             details={"field": "amount"})
    asset = NATIVE_ASSET[Chain(chain)]
    destination = _destination(user, chain)
    usd = _usd_value(asset, amount)
    if usd is not None and usd > Decimal(settings.WITHDRAWAL_MAX_USD):
        raise TransactionLimitExceeded(details={"usd_value": f"{usd:.2f}",
                                                "limit_usd": str(settings.WITHDRAWAL_MAX_USD)})
    needs_approval = usd is None or usd > Decimal(settings.WITHDRAWAL_APPROVAL_THRESHOLD_USD)

    with transaction.atomic():
        # The balance row lock serializes every withdrawal of this user on this chain: the
        # second of two concurrent requests reads what the first left available.
        balance = lock_balance(user_id=user.pk, chain=chain)
        if request_key:
            existing = Withdrawal.objects.filter(user=user, request_key=request_key).first()
            if existing is not None:
                if (existing.chain, int(existing.amount)) != (chain, amount):
                    raise IdempotencyKeyReused(details={"withdrawal_id": str(existing.pk)})
                return existing
        if balance.available < amount:
            raise InsufficientFunds(details={"chain": chain, "asset": asset,
                                             "available": str(balance.available),
                                             "requested": str(amount)})
        status = W.PENDING_APPROVAL if needs_approval else W.APPROVED
        try:
            with transaction.atomic():
                withdrawal = Withdrawal.objects.create(
                    user=user, chain=chain, asset=asset, amount=Decimal(amount),
                    destination=destination, status=status, request_key=request_key,
                    approved_by="" if needs_approval else "auto",
                    approved_at=None if needs_approval else timezone.now())
        except IntegrityError:
            existing = Withdrawal.objects.filter(user=user, request_key=request_key).first()
            if existing is None:
                raise
            return existing
        accounts = user_accounts(user_id=user.pk, asset=asset)
        post_once(reference=f"withdrawal:{withdrawal.pk}", kind="withdrawal_requested",
                  description=f"Withdrawal {withdrawal.pk} to {destination}",
                  legs=[Leg(accounts.available, asset, amount),
                        Leg(accounts.withdrawing, asset, -amount)],
                  user_id=user.pk)
        balance_apply(balance=balance, locked_delta=amount)
        audit_record(event_type="withdrawal_requested", actor=f"user:{user.pk}",
                     entity_type="withdrawal", entity_id=withdrawal.pk, user_id=user.pk,
                     details={"chain": chain, "amount": str(amount), "destination": destination,
                              "status": status,
                              "usd_value": f"{usd:.2f}" if usd is not None else None,
                              "approval_threshold_usd": str(settings.WITHDRAWAL_APPROVAL_THRESHOLD_USD)})
        publish_after_commit(event=withdrawal_event(withdrawal, previous=None), user_id=user.pk)
        balance_publish(balance=balance, reason="withdrawal_requested", reference=str(withdrawal.pk))
        if status == W.APPROVED:
            withdrawal_id = str(withdrawal.pk)
            transaction.on_commit(lambda: _enqueue_execute(withdrawal_id), robust=True)
    return withdrawal


def _operator_actor(operator: User) -> str:
    if not (operator.is_active and operator.is_staff
            and operator.has_perm("settlement.approve_withdrawal")):
        raise Forbidden("Only operators with the approve_withdrawal permission can do this")
    return f"operator:{operator.get_username()}"


def withdrawal_approve(*, withdrawal_id: Any, operator: User) -> Withdrawal:
    """An operator releases a withdrawal held above the approval threshold."""
    actor = _operator_actor(operator)
    with transaction.atomic():
        withdrawal = _lock(withdrawal_id)
        _move(withdrawal, W.APPROVED, actor=actor,
              fields={"approved_by": actor, "approved_at": timezone.now()})
        withdrawal_id_text = str(withdrawal.pk)
        transaction.on_commit(lambda: _enqueue_execute(withdrawal_id_text), robust=True)
    return withdrawal


def _give_back(withdrawal: Withdrawal, *, actor: str, reason: str) -> None:
    """The reserved amount returns to the user's available balance (row locked)."""
    amount, asset = int(withdrawal.amount), withdrawal.asset
    balance = lock_balance(user_id=withdrawal.user_id, chain=withdrawal.chain)
    accounts = user_accounts(user_id=withdrawal.user_id, asset=asset)
    if post_once(reference=f"withdrawal_return:{withdrawal.pk}", kind="withdrawal_returned",
                 description=f"Withdrawal {withdrawal.pk} {reason}: amount returned",
                 legs=[Leg(accounts.withdrawing, asset, amount),
                       Leg(accounts.available, asset, -amount)],
                 user_id=withdrawal.user_id, tx_hash=withdrawal.tx_hash or ""):
        balance_apply(balance=balance, locked_delta=-amount)
        balance_publish(balance=balance, reason=f"withdrawal_{reason}", reference=str(withdrawal.pk))
    logger.info("withdrawal returned to balance", extra={"withdrawal_id": str(withdrawal.pk),
                                                         "actor": actor, "reason": reason})


def withdrawal_reject(*, withdrawal_id: Any, operator: User, reason: str) -> Withdrawal:
    """An operator refuses a held withdrawal; the amount becomes available again."""
    actor = _operator_actor(operator)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidRequest("A reason is required to reject a withdrawal")
    with transaction.atomic():
        withdrawal = _lock(withdrawal_id)
        _move(withdrawal, W.REJECTED, actor=actor, fields={"fail_reason": reason},
              details={"reason": reason})
        _give_back(withdrawal, actor=actor, reason="rejected")
    return withdrawal


# -- paying out -------------------------------------------------------------------------------


def _signed_payout(withdrawal: Withdrawal) -> SignedPayout:
    return SignedPayout(tx_hash=withdrawal.tx_hash or "",
                        signed_transaction=withdrawal.signed_transaction,
                        details=dict(withdrawal.chain_details.get("signing") or {}))


def _sign(withdrawal_id: Any, payouts: PayoutChain, prepared: dict[str, Any]) -> Withdrawal:
    """Sign once and store the bytes and hash before anything is sent."""
    with transaction.atomic():
        withdrawal = _lock(withdrawal_id)
        if withdrawal.status != W.APPROVED:
            return withdrawal  # a twin signed it first
        signed = payouts.sign(destination=withdrawal.destination, amount=int(withdrawal.amount),
                              unique_id=str(withdrawal.pk), prepared=prepared)
        _move(withdrawal, W.SIGNED, actor="system:withdrawals",
              fields={"tx_hash": signed.tx_hash, "signed_transaction": signed.signed_transaction,
                      "chain_details": {**withdrawal.chain_details, "signing": signed.details}})
    return withdrawal


def _complete(withdrawal_id: Any, result: PayoutResult) -> Withdrawal:
    with transaction.atomic():
        withdrawal = _lock(withdrawal_id)
        if withdrawal.status not in IN_FLIGHT:
            return withdrawal
        amount, asset, fee = int(withdrawal.amount), withdrawal.asset, int(result.fee)
        _move(withdrawal, W.COMPLETED, actor="system:withdrawals",
              fields={"completed_at": timezone.now(), "network_fee": Decimal(fee),
                      "chain_details": {**withdrawal.chain_details, "result": result.raw}},
              details={"network_fee": str(fee)})
        accounts = user_accounts(user_id=withdrawal.user_id, asset=asset)
        treasury = account_code("treasury", withdrawal.chain, asset)
        legs = [Leg(accounts.withdrawing, asset, amount), Leg(treasury, asset, -(amount + fee))]
        if fee:
            legs.append(Leg(account_code("network_fees", withdrawal.chain, asset), asset, fee))
        balance = lock_balance(user_id=withdrawal.user_id, chain=withdrawal.chain)
        if post_once(reference=f"payout:withdrawal:{withdrawal.pk}", kind="withdrawal_paid",
                     description=f"Withdrawal {withdrawal.pk} paid to {withdrawal.destination}",
                     legs=legs, user_id=withdrawal.user_id, tx_hash=withdrawal.tx_hash or ""):
            balance_apply(balance=balance, amount_delta=-amount, locked_delta=-amount)
            balance_publish(balance=balance, reason="withdrawal_completed",
                            reference=str(withdrawal.pk))
    return withdrawal


def _fail(withdrawal_id: Any, *, reason: str, fee: int = 0, raw: dict[str, Any] | None = None) -> Withdrawal:
    with transaction.atomic():
        withdrawal = _lock(withdrawal_id)
        if withdrawal.status not in IN_FLIGHT:
            return withdrawal
        _move(withdrawal, W.FAILED, actor="system:withdrawals",
              fields={"fail_reason": reason[:1000], "network_fee": Decimal(fee),
                      "chain_details": {**withdrawal.chain_details, "result": raw or {}}},
              details={"reason": reason[:500], "network_fee": str(fee)})
        _give_back(withdrawal, actor="system:withdrawals", reason="failed")
        if fee:
            # The chain included the failed payout and charged for it: the treasury paid.
            asset = withdrawal.asset
            post_once(reference=f"withdrawal_fee:{withdrawal.pk}", kind="network_fee",
                      description=f"Fee of failed withdrawal {withdrawal.pk}",
                      legs=[Leg(account_code("network_fees", withdrawal.chain, asset), asset, fee),
                            Leg(account_code("treasury", withdrawal.chain, asset), asset, -fee)],
                      user_id=withdrawal.user_id, tx_hash=withdrawal.tx_hash or "")
    return withdrawal


def _resolve(withdrawal: Withdrawal, payouts: PayoutChain) -> Withdrawal:
    """Send (or look up) the stored payout and book what the chain says happened."""
    signed = _signed_payout(withdrawal)
    try:
        payouts.verify_offline(signed, destination=withdrawal.destination,
                               amount=int(withdrawal.amount))
    except PayoutInvalid as exc:
        # Our own stored bytes do not pay what the row says: someone changed one of them.
        # Never send; an operator must look (the funds stay reserved).
        from risk.services import alert_raise

        with transaction.atomic():
            alert_raise(kind="withdrawal_payout_invalid",
                        message=f"Withdrawal {withdrawal.pk}: stored payout invalid: {exc}",
                        details={"withdrawal_id": str(withdrawal.pk)})
        logger.error("stored payout invalid", extra={"withdrawal_id": str(withdrawal.pk)})
        return withdrawal

    if withdrawal.status == W.SUBMITTED:
        # A retry: it may have landed already. Ask before sending anything again.
        result = payouts.status(signed)
        if result.state == "not_found":
            if payouts.provably_dead(signed):
                return _fail(withdrawal.pk, reason="payout expired without reaching the chain")
            result = payouts.submit(signed)  # the same bytes: the chain includes them once
    else:
        with transaction.atomic():
            locked = _lock(withdrawal.pk)
            if locked.status != W.SIGNED:
                return locked
            _move(locked, W.SUBMITTED, actor="system:withdrawals")
        result = payouts.submit(signed)

    if result.state == "success":
        return _complete(withdrawal.pk, result)
    if result.state == "failed":
        return _fail(withdrawal.pk, reason=result.reason or "payout failed", fee=result.fee,
                     raw=result.raw)
    logger.warning("payout outcome unknown; will look again",
                   extra={"withdrawal_id": str(withdrawal.pk), "reason": result.reason})
    return Withdrawal.objects.get(pk=withdrawal.pk)


def withdrawal_execute(*, withdrawal_id: Any) -> Withdrawal:
    """Pay an approved withdrawal out (or carry an in-flight one to its end). Safe to run
    any number of times, concurrently: it signs at most once and books at most once."""
    withdrawal = Withdrawal.objects.filter(pk=withdrawal_id).first()
    if withdrawal is None:
        raise NotFound("Withdrawal not found", code="WITHDRAWAL_NOT_FOUND", status=404)
    if withdrawal.status in FINAL or withdrawal.status == W.PENDING_APPROVAL:
        return withdrawal
    payouts = payout_chain(withdrawal.chain)
    with payout_lock(withdrawal.chain):
        withdrawal.refresh_from_db()
        if withdrawal.status == W.APPROVED and breaker_is_open():
            # Books and chain may disagree (or something else tripped it): no new money
            # leaves until an operator resets the breaker; the periodic job resumes it.
            logger.warning("withdrawal held: circuit breaker open",
                           extra={"withdrawal_id": str(withdrawal.pk)})
            return withdrawal
        if withdrawal.status == W.APPROVED:
            # Any earlier payout of this chain still in flight holds the sequence / nonce
            # this one would take: finish those first.
            for earlier in (Withdrawal.objects.filter(chain=withdrawal.chain, status__in=IN_FLIGHT)
                            .exclude(pk=withdrawal.pk).order_by("created_at")):
                _resolve(earlier, payouts)
            from settlement.services.refund_payouts import refunds_in_flight_resolve

            refunds_in_flight_resolve(chain=withdrawal.chain, payouts=payouts)
            prepared = payouts.prepare()  # chain I/O, outside any transaction
            withdrawal = _sign(withdrawal.pk, payouts, prepared)
        if withdrawal.status in IN_FLIGHT:
            withdrawal = _resolve(withdrawal, payouts)
    return withdrawal


def withdrawals_resume(*, older_than_seconds: int = 60) -> dict[str, int]:
    """Carry on payouts whose task was lost (periodic job): approved ones never signed, and
    signed / submitted ones without a final outcome."""
    cutoff = timezone.now() - dt.timedelta(seconds=older_than_seconds)
    pending = list(Withdrawal.objects.filter(status__in=[W.APPROVED, *IN_FLIGHT],
                                             updated_at__lt=cutoff)
                   .order_by("created_at").values_list("pk", flat=True)[:100])
    outcomes: dict[str, int] = {}
    for withdrawal_id in pending:
        try:
            status = withdrawal_execute(withdrawal_id=withdrawal_id).status
        except Exception:  # one stuck payout must not stop the others
            logger.exception("withdrawal resume failed", extra={"withdrawal_id": str(withdrawal_id)})
            status = "error"
        outcomes[status] = outcomes.get(status, 0) + 1
    return outcomes
