"""Funding: the one path by which a payment on Stellar or NEAR commits a quote.

Three doors call `payment_submit`: the client (`POST /api/v1/quotes/{id}/payment`, seed
`POST /commit`), signed webhooks, and the watcher. Whatever they send is a hint; the
verifier re-reads amount, memo, destination, asset, success and finality from the chain
(or, in sandbox mode, from the signed transaction itself). Verification is network I/O in
live mode, so it runs OUTSIDE any database transaction; then `payment_record` does all the
bookkeeping in ONE transaction:

1. INSERT the FundingPayment. UNIQUE(chain, tx_hash) makes this the exactly-once gate: a
   replayed webhook, a retried task or a second door reporting the same transaction hits
   the constraint and gets the first outcome back, changing nothing.
2. Match the memo (Stellar memo id/hash, NEAR `execute_payment{quote_id}` or
   `deposit{memo}`) to a quote or to a user's balance deposit memo.
3. For a quote: lock its row, re-read it, then decide:
     exact / over   → commit (pending → committed), refund the excess
     under          → quote stays pending, the whole payment is owed back
     after expiry   → late, owed back (a pending quote past its time becomes expired)
     already paid   → duplicate, owed back
   For a deposit memo: credit the user's prepaid balance. No match: hold it as unmatched
   for an operator.
4. Post the balanced ledger entry `payment:<chain>:<tx_hash>` (treasury debited with what
   arrived; customer funds, refunds payable, a user balance or unmatched deposits credited),
   write the refund record, audit, publish, and ask for the executor's wake-up (queued
   with the commit, and only when none is pending: execution/services/wakeup.py).
   The committed quote's money is locked in `customer_funds:<chain>:<asset>` (a liability):
   execution later earns it (→ revenue) or, on failure, owes it back (→ refunds_payable).

Lateness is judged by the ledger's close time when the chain gives one (live mode): a
payment that landed before expiry is honoured even if we hear of it afterwards.

Top-up of an underpaid quote is deliberately not supported: each payment is judged on its
own, an underpayment is refunded in full and the client pays the full amount again. Adding
partial payments together would need a per-quote running total and makes refunds ambiguous.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from django.db import IntegrityError, transaction
from django.db.models import Model
from django.utils import timezone

from config.bulk import insert_if_new, insert_together
from config.errors import ServiceError, Unavailable
from config.events import Published, publish_after_commit_many
from config.prepared import prepared_statements
from config.rows import RowReader
from execution.services.wakeup import execution_wake
from quotes.models import Quote, QuoteStatus
from quotes.services.transitions import quote_status_event, quote_transition
from risk.audit import audit_event, audit_record
from settlement.chains.base import ChainUnavailable, PaymentInvalid, VerifiedPayment
from settlement.ledger import EntrySpec, Leg, account_code, ledger_entry_rows
from settlement.models import FundingPayment, FundingPaymentStatus, Refund
from settlement.services.balances import balance_apply, balance_publish, lock_balance
from settlement.services.refunds import refund_create, refund_destination
from settlement.verifiers import chain_mode_is_live, payment_verify
from users.models import User

logger = logging.getLogger(__name__)

PaymentSource = Literal["api", "webhook", "watcher", "operator"]
SOURCES = ("api", "webhook", "watcher", "operator")
P = FundingPaymentStatus
Q = QuoteStatus

# A quote in one of these states was already paid: another payment for it is a duplicate.
_ALREADY_PAID = {Q.COMMITTED, Q.EXECUTING, Q.EXECUTED, Q.FAILED, Q.REFUND_DUE, Q.REFUNDED}
_CLOSED_UNPAID = {Q.EXPIRED, Q.CANCELLED}
_MAX_DEPOSIT_MEMO = 2**63 - 1  # users.deposit_memo is a PostgreSQL bigint
_STELLAR_HASH = re.compile(r"[0-9a-f]{64}")
_NEAR_HASH = re.compile(r"[1-9A-HJ-NP-Za-km-z]{32,44}")


class PaymentRefused(ServiceError):
    """The payment was checked and is not acceptable (bad signature, wrong asset, ...)."""

    code, status, default_message = "PAYMENT_INVALID", 400, "Payment refused"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, details={"reason": reason})
        self.reason = reason


class ChainUnavailableError(Unavailable):
    """No verdict: the chain backend did not answer. Retry later."""

    code, default_message = "CHAIN_UNAVAILABLE", "Chain backend unavailable, retry later"


@dataclass(frozen=True)
class PaymentOutcome:
    payment: FundingPayment
    quote: Quote | None
    refund: Refund | None
    created: bool  # False: this transaction was already recorded (a replay changed nothing)
    committed: bool  # this payment is the one that committed its quote

    @property
    def status(self) -> str:
        return self.payment.status


@dataclass(frozen=True)
class _Target:
    quote: Quote | None = None  # locked for the rest of the transaction
    deposit_user_id: uuid.UUID | None = None


# --------------------------------------------------------------------------- doors


def payment_submit(*, chain: str, source: PaymentSource, tx_hash: str | None = None,
                   sender: str | None = None, envelope_xdr: str | None = None,
                   signed_transaction_base64: str | None = None,
                   expected_quote: Quote | None = None, user: User | None = None) -> PaymentOutcome:
    """Verify a payment by its reference and record it. Every door calls this.

    `expected_quote` (the client door) must be the quote the payment's memo pays.
    Raises PaymentRefused (400 PAYMENT_INVALID) or ChainUnavailableError (503).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown payment source {source!r}")
    if expected_quote is not None and expected_quote.source_chain != chain:
        raise PaymentRefused("WRONG_CHAIN", f"This quote is paid on {expected_quote.source_chain}")

    if tx_hash and chain_mode_is_live():
        # Live: the hash IS the payment's identity, so a known one needs no chain round-trip.
        known = FundingPayment.objects.filter(chain=chain, tx_hash=_normal_hash(chain, tx_hash)).first()
        if known is not None:
            _check_expected(expected_quote, known.quote_id)
            return _outcome_of(known, created=False)

    try:
        verified = payment_verify(chain=chain, tx_hash=tx_hash, sender=sender,
                                  envelope_xdr=envelope_xdr,
                                  signed_transaction_base64=signed_transaction_base64)
    except PaymentInvalid as exc:
        audit_record(event_type="payment_refused", actor=f"payment:{source}",
                     entity_type="payment", entity_id=(tx_hash or "")[:64],
                     user_id=user.pk if user else None,
                     details={"chain": chain, "reason": exc.code, "message": exc.message})
        raise PaymentRefused(exc.code, exc.message) from exc
    except ChainUnavailable as exc:
        logger.warning("chain unavailable while verifying a payment",
                       extra={"chain": chain, "error": str(exc)})
        raise ChainUnavailableError(details={"chain": chain}) from exc
    return payment_record(verified=verified, source=source, expected_quote=expected_quote, user=user)


def payment_record(*, verified: VerifiedPayment, source: PaymentSource,
                   expected_quote: Quote | None = None, user: User | None = None) -> PaymentOutcome:
    """Book one verified payment, exactly once. No I/O: safe inside a caller's transaction
    (the watcher advances its cursor in the same one).

    Its statements are fixed look-ups by unique keys and inserts, so they run prepared
    (config.prepared): a third of PostgreSQL's CPU per payment was parsing and planning."""
    if not (verified.successful and verified.final):
        raise PaymentRefused("NOT_FINAL", "Only successful, final payments are booked")
    with prepared_statements(), transaction.atomic():
        target = _match(verified)
        _check_expected(expected_quote, target.quote.pk if target.quote is not None else None)
        # New rows of the booking (transition, ledger entry, audit) go in as one statement.
        rows: list[Model] = []
        if target.quote is not None:
            outcome = _apply_to_quote(target.quote, verified, source, rows)
        elif target.deposit_user_id is not None:
            outcome = _credit_balance(verified, source, target.deposit_user_id, rows)
        else:
            outcome = _hold_unmatched(verified, source, rows)
        if not outcome.created:  # a replay: the payment is known and nothing changes
            return outcome
        payment = outcome.payment
        rows.append(audit_event(
            event_type=f"payment_{payment.status}", actor=f"payment:{source}",
            entity_type="funding_payment", entity_id=payment.pk, user_id=payment.user_id,
            details={"chain": payment.chain, "tx_hash": payment.tx_hash,
                     "amount": str(payment.amount), "asset": payment.asset,
                     "memo": payment.memo, "quote_id": str(payment.quote_id or "") or None,
                     "submitted_by": str(user.pk) if user else None,
                     "refund": str(outcome.refund.amount) if outcome.refund else None},
        ))
        insert_together(*rows)
        if payment.user_id is not None:
            events: list[Published] = []
            if outcome.committed and outcome.quote is not None:
                quote = outcome.quote  # its transition left the status event to us
                events.append((quote_status_event(quote, previous=Q.PENDING,
                                                  at=quote.committed_at), quote.user_id, quote.pk))
            events.append((payment_event(outcome), payment.user_id, payment.quote_id))
            publish_after_commit_many(events)
        if outcome.committed and outcome.quote is not None:
            # Last before the commit: a wake-up this sets keeps its flag row locked to the
            # end of the transaction, and concurrent payments' requests wait for that.
            execution_wake(outcome.quote.pk)
        return outcome


def payment_event(outcome: PaymentOutcome) -> dict[str, Any]:
    payment = outcome.payment
    return {
        "event": "payment.received",
        "payment_id": str(payment.pk),
        "quote_id": str(payment.quote_id) if payment.quote_id else None,
        "chain": payment.chain,
        "tx_hash": payment.tx_hash,
        "asset": payment.asset,
        "amount": str(int(payment.amount)),
        "status": payment.status,
        "committed": outcome.committed,
        "refund": ({"amount": str(int(outcome.refund.amount)), "reason": outcome.refund.reason,
                    "destination": outcome.refund.destination}
                   if outcome.refund else None),
        "at": (payment.resolved_at or payment.received_at).isoformat(),
    }


# --------------------------------------------------------------------------- matching


def _normal_hash(chain: str, tx_hash: str) -> str:
    # Stellar hashes are hex (Horizon lowercases them); NEAR's base58 is case-sensitive.
    return tx_hash.lower() if chain == "stellar" else tx_hash


def _check_expected(expected_quote: Quote | None, quote_id: Any) -> None:
    if expected_quote is not None and quote_id != expected_quote.pk:
        raise PaymentRefused("QUOTE_MISMATCH", "This payment's memo does not pay this quote")


_quote_rows = RowReader(Quote)
_QUOTE_BY_MEMO = _quote_rows.select + """
WHERE t.source_chain = %s AND t.payment_memo = %s AND (%s::text IS NULL OR t.payment_memo_type = %s)
FOR UPDATE"""


def _quote_by_memo(chain: str, memo: str, memo_type: str | None = None) -> Quote | None:
    # A fixed statement: every payment asks this (config.rows says why).
    # UNIQUE(source_chain, payment_memo): at most one row.
    return _quote_rows.first(_QUOTE_BY_MEMO, [chain, memo, memo_type, memo_type])


def _user_by_deposit_memo(memo: str) -> uuid.UUID | None:
    if not memo.isascii() or not memo.isdigit() or not 0 < int(memo) <= _MAX_DEPOSIT_MEMO:
        return None
    return User.objects.filter(deposit_memo=int(memo)).values_list("pk", flat=True).first()


def _match(verified: VerifiedPayment) -> _Target:
    """Which quote or balance a payment is for. The quote is found and locked in one
    statement: two payments for one quote serialize here, and the second sees it paid."""
    if verified.chain == "stellar":
        if verified.memo and verified.memo_type in ("id", "hash"):
            quote = _quote_by_memo("stellar", verified.memo, verified.memo_type)
            if quote is not None:
                return _Target(quote=quote)
            if verified.memo_type == "id":
                return _Target(deposit_user_id=_user_by_deposit_memo(verified.memo))
        return _Target()
    if verified.quote_id:  # execute_payment({"quote_id": ...}): the quote's id (or its memo)
        try:
            quote = (Quote.objects.select_for_update()
                     .filter(pk=uuid.UUID(verified.quote_id), source_chain="near").first())
        except ValueError:
            quote = _quote_by_memo("near", verified.quote_id)
        return _Target(quote=quote)
    if verified.memo:  # deposit({"memo": ...}): a balance deposit memo (or a quote's memo)
        user_id = _user_by_deposit_memo(verified.memo)
        if user_id is not None:
            return _Target(deposit_user_id=user_id)
        return _Target(quote=_quote_by_memo("near", verified.memo))
    return _Target()


# --------------------------------------------------------------------------- booking


def _payment_insert(verified: VerifiedPayment, source: str, status: str, *,
                    quote: Quote | None = None, user_id: Any = None,
                    resolved: bool = True) -> tuple[FundingPayment, bool]:
    """Insert the payment with its verdict already decided (one statement, no later
    update). False with the stored row when this chain transaction is already recorded."""
    reference = verified.quote_id if verified.quote_id is not None else verified.memo
    memo_type = "quote_id" if verified.quote_id is not None else (verified.memo_type or "")
    details = {"verified": _jsonable(verified.raw), "method_name": verified.method_name}
    if reference is not None and len(reference) > 128:
        details["full_memo"] = reference[:4096]
    payment = FundingPayment(
        chain=verified.chain, tx_hash=verified.tx_hash, status=status, quote=quote,
        user_id=quote.user_id if quote is not None else user_id,
        resolved_at=timezone.now() if resolved else None, asset=verified.asset,
        amount=verified.amount,
        from_address=verified.from_address, to_address=verified.to_address,
        memo_type=memo_type, memo=(reference or "")[:128], source=source,
        chain_details=details, chain_time=verified.ledger_time,
    )
    # UNIQUE(chain, tx_hash) is the replay signal: a conflict means the payment is known.
    if insert_if_new(payment, unique=("chain", "tx_hash")):
        return payment, True
    existing = FundingPayment.objects.filter(chain=verified.chain, tx_hash=verified.tx_hash).first()
    if existing is None:  # a conflict with no row to show for it: never guess
        raise IntegrityError(f"payment {verified.chain}:{verified.tx_hash} conflicts, not found")
    return existing, False


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _book(payment: FundingPayment, credits: list[tuple[str, str, int]], *, kind: str,
          description: str, rows: list[Model]) -> None:
    """The payment's one entry: the treasury received `amount`; `credits` say whose it is.
    Its rows are appended to `rows`, which payment_record inserts in one statement."""
    asset, chain, amount = payment.asset, payment.chain, int(payment.amount)
    legs = [Leg(account_code("treasury", chain, asset), asset, amount)]
    legs += [Leg(account_code(kind_, scope, asset), asset, -value)
             for kind_, scope, value in credits if value]
    # The reference names the payment row this transaction just inserted (UNIQUE per chain
    # and hash), so it is new: no savepoint for a duplicate that cannot happen.
    entry = ledger_entry_rows(EntrySpec(
        reference=f"payment:{chain}:{payment.tx_hash}", kind=kind, description=description,
        legs=legs, quote_id=payment.quote_id, user_id=payment.user_id, tx_hash=payment.tx_hash))
    rows.extend(entry)


def _apply_to_quote(quote: Quote, verified: VerifiedPayment, source: str,
                    rows: list[Model]) -> PaymentOutcome:
    """The payment for a quote locked by the caller: its verdict, then (if new) the quote's
    commit or the refund it is owed."""
    chain, amount, due = verified.chain, int(verified.amount), int(quote.total_cost)
    paid_at = verified.ledger_time or timezone.now()
    actor = f"payment:{source}"

    if quote.status in _ALREADY_PAID:
        status, reason, refund_amount = P.DUPLICATE, "duplicate", amount
    elif quote.status in _CLOSED_UNPAID or paid_at >= quote.expires_at:
        status, refund_amount = P.LATE, amount
        reason = "cancelled" if quote.status == Q.CANCELLED else "late"
    elif verified.asset != quote.source_asset:
        status, reason, refund_amount = P.UNDERPAID, "wrong_asset", amount
    elif amount < due:
        status, reason, refund_amount = P.UNDERPAID, "underpaid", amount
    else:
        status = P.MATCHED if amount == due else P.OVERPAID
        reason, refund_amount = "overpaid", amount - due

    payment, created = _payment_insert(verified, source, status, quote=quote)
    if not created:
        return _outcome_of(payment, created=False)
    committed = status in (P.MATCHED, P.OVERPAID)
    if status == P.LATE and quote.status == Q.PENDING and quote.is_expired:
        quote_transition(quote_id=quote.pk, quote=quote, to_status=Q.EXPIRED, actor=actor,
                         expected_from={Q.PENDING}, tx_hash=payment.tx_hash,
                         details={"reason": "payment arrived after expiry",
                                  "funding_payment_id": str(payment.pk)})
    if committed:
        # The status event leaves with the payment's own (payment_record), in one send.
        quote_transition(quote_id=quote.pk, quote=quote, to_status=Q.COMMITTED, actor=actor,
                         expected_from={Q.PENDING}, tx_hash=payment.tx_hash, publish=False,
                         rows=rows,
                         details={"funding_payment_id": str(payment.pk), "chain": chain,
                                  "amount": str(amount), "total_cost": str(due)})
    _book(payment,
          [("customer_funds", chain, amount - refund_amount),
           ("refunds_payable", chain, refund_amount)],
          kind="payment_received",
          description=f"{status} payment for quote {quote.pk}", rows=rows)
    refund = None
    if refund_amount:
        refund = refund_create(reason=reason, payment=payment, quote=quote, amount=refund_amount,
                               destination=refund_destination(quote=quote, payment=payment),
                               actor=actor)
    return PaymentOutcome(payment=payment, quote=quote, refund=refund, created=True,
                          committed=committed)


def _credit_balance(verified: VerifiedPayment, source: str, user_id: uuid.UUID,
                    rows: list[Model]) -> PaymentOutcome:
    payment, created = _payment_insert(verified, source, P.CREDITED, user_id=user_id)
    if not created:
        return _outcome_of(payment, created=False)
    amount = int(payment.amount)
    _book(payment, [("user_balance", str(user_id), amount)], kind="balance_deposit",
          description="Prepaid balance deposit", rows=rows)
    # The projection moves with its posting, under the balance row lock (balances service).
    balance = lock_balance(user_id=user_id, chain=payment.chain)
    balance_apply(balance=balance, amount_delta=amount)
    balance_publish(balance=balance, reason="deposit", reference=f"payment:{payment.chain}:{payment.tx_hash}")
    return PaymentOutcome(payment=payment, quote=None, refund=None, created=True, committed=False)


def _hold_unmatched(verified: VerifiedPayment, source: str, rows: list[Model]) -> PaymentOutcome:
    # Resolved later by an operator.
    payment, created = _payment_insert(verified, source, P.UNMATCHED, resolved=False)
    if not created:
        return _outcome_of(payment, created=False)
    _book(payment, [("unmatched_deposits", payment.chain, int(payment.amount))],
          kind="payment_unmatched", description="Payment with an unknown memo, held for an operator",
          rows=rows)
    return PaymentOutcome(payment=payment, quote=None, refund=None, created=True, committed=False)


def _outcome_of(payment: FundingPayment, *, created: bool) -> PaymentOutcome:
    quote = Quote.objects.filter(pk=payment.quote_id).first() if payment.quote_id else None
    refund = payment.refunds.order_by("created_at").first()
    return PaymentOutcome(payment=payment, quote=quote, refund=refund, created=created,
                          committed=payment.status in (P.MATCHED, P.OVERPAID))


# --------------------------------------------------------------------------- webhooks


def webhook_rejected(*, chain: str, reason: str, remote_addr: str, body: bytes) -> None:
    """Audit a webhook whose signature is missing, wrong or stale. The caller is outside
    any transaction, so this row commits even though the request is refused."""
    audit_record(event_type="webhook_signature_invalid", actor=f"webhook:{chain}",
                 entity_type="webhook", entity_id=chain,
                 details={"reason": reason, "remote_addr": remote_addr,
                          "body_bytes": len(body),
                          "body_sha256": hashlib.sha256(body).hexdigest()})


def payment_hint_enqueue(*, chain: str, tx_hash: str, sender: str | None) -> str:
    """Live mode: a webhook names a transaction; a worker asks the chain about it (network
    I/O stays out of the request). Returns the task id."""
    from django_q.tasks import async_task

    tx_hash = _normal_hash(chain, tx_hash)
    if chain == "stellar" and not _STELLAR_HASH.fullmatch(tx_hash):
        raise PaymentRefused("MALFORMED", "transaction_hash must be 64 hex characters")
    if chain == "near":
        if not _NEAR_HASH.fullmatch(tx_hash):
            raise PaymentRefused("MALFORMED", "transaction_hash must be base58")
        if not sender:
            raise PaymentRefused("MALFORMED", "signer_id is required to look a NEAR transaction up")
    task_id: str = async_task("settlement.tasks.payment_hint_process", chain, tx_hash, sender,
                              task_name=f"payment_hint:{chain}:{tx_hash}"[:100],
                              group="payment_hints")
    return task_id
