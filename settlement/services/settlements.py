"""Settlements: one per executed quote, matching the execution with the funding it used
(seed 004's lifecycle: pending → verified → settled, or → failed | timed_out).

`settlement_open` is called by the executor in the transaction that records a successful
execution. Verification against the source chain, settling, the stuck-settlement finder and
the rest of the lifecycle build on the rows created here:

    pending → verified   the Solana transaction is on chain and succeeded, AND the quote was
                         funded: a booked, matching payment (re-read from Stellar / NEAR in
                         live mode) or a prepaid balance lock
    verified → settled   the books carry it (the quote's revenue is earned)
    pending → failed     a leg is provably wrong (tx failed, payment does not pay the quote)
    pending → timed_out  still unverifiable after SETTLEMENT_STUCK_AFTER_SECONDS
    timed_out → verified | failed   an operator's retry, or an operator's decision

Chain reads happen outside any transaction; the decision is then taken under the row lock,
so concurrent passes decide once.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from config.bulk import insert_together
from config.errors import Conflict, InvalidRequest, NotFound
from config.transitions import refuse_unless_allowed, require_transaction
from execution.models import Execution, ExecutionStatus
from risk.audit import audit_event, audit_record
from settlement.models import (
    FundingPayment,
    FundingPaymentStatus,
    JournalEntry,
    Settlement,
    SettlementStatus,
    SettlementTransition,
)

logger = logging.getLogger(__name__)


def settlement_open(*, execution: Execution, funding_payment: FundingPayment | None = None,
                    actor: str = "system:execution") -> Settlement:
    """Create the pending settlement of an execution, once (a retry gets the first row)."""
    require_transaction("settlement_open")
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


def settlement_open_many(*, opened: list[tuple[Execution, FundingPayment | None]],
                         actor: str = "system:execution") -> None:
    """`settlement_open` for a batch of executions that confirmed in the caller's
    transaction (so none has a settlement yet; UNIQUE(execution) would refuse a twin)."""
    require_transaction("settlement_open_many")
    if not opened:
        return
    settlements = [
        Settlement(execution=execution, funding_payment=payment, status=SettlementStatus.PENDING,
                   source_chain=execution.quote.source_chain,
                   source_tx_hash=payment.tx_hash if payment else "",
                   source_amount=execution.quote.total_cost)
        for execution, payment in opened
    ]
    transitions = [
        SettlementTransition(settlement=settlement, from_status="",
                             to_status=SettlementStatus.PENDING, actor=actor,
                             details={"execution_id": str(execution.pk),
                                      "quote_id": str(execution.quote_id)},
                             tx_hash=settlement.source_tx_hash)
        for settlement, (execution, _) in zip(settlements, opened, strict=True)
    ]
    audits = [
        audit_event(event_type="settlement_pending", actor=actor, entity_type="settlement",
                    entity_id=settlement.pk, user_id=execution.quote.user_id,
                    details={"execution_id": str(execution.pk),
                             "quote_id": str(execution.quote_id),
                             "source_chain": execution.quote.source_chain,
                             "source_tx_hash": settlement.source_tx_hash,
                             "source_amount": str(execution.quote.total_cost)})
        for settlement, (execution, _) in zip(settlements, opened, strict=True)
    ]
    insert_together(*settlements, *transitions, *audits)  # one statement for the batch


# -- lifecycle after opening (seed 004): verify, settle, fail, time out, retry ---------------

S = SettlementStatus
SETTLEMENT_ALLOWED: dict[str, set[str]] = {
    S.PENDING: {S.VERIFIED, S.FAILED, S.TIMED_OUT},
    S.VERIFIED: {S.SETTLED, S.FAILED},
    # An operator's retry may still verify a timed-out settlement; or fail it, with a reason.
    S.TIMED_OUT: {S.VERIFIED, S.FAILED},
    S.SETTLED: set(),
    S.FAILED: set(),
}
SETTLEMENT_FINAL = frozenset({S.SETTLED, S.FAILED})
_PAID = (FundingPaymentStatus.MATCHED, FundingPaymentStatus.OVERPAID)


class InvalidSettlementTransition(Conflict):
    code = "INVALID_STATE_TRANSITION"


@dataclass(frozen=True)
class SettlementEvidence:
    """What the chains and the books say about one settlement. `verdict` is `verified`
    (both legs proven), `failed` (a leg is provably wrong) or `unknown` (ask again later)."""

    verdict: str
    details: dict[str, Any]
    reason: str = ""


def _lock_settlement(settlement_id: Any) -> Settlement:
    try:
        return (Settlement.objects.select_for_update()
                .select_related("execution", "execution__quote").get(pk=settlement_id))
    except (Settlement.DoesNotExist, ValueError, TypeError):
        raise NotFound("Settlement not found", code="SETTLEMENT_NOT_FOUND", status=404) from None


def settlement_transition(*, settlement: Settlement, to_status: str, actor: str,
                          details: dict[str, Any] | None = None, tx_hash: str = "") -> Settlement:
    """The one place a settlement's status changes (row locked by the caller): validates the
    move, stamps its time, writes the transition row and the audit event."""
    require_transaction("settlement_transition")
    previous = settlement.status
    refuse_unless_allowed(InvalidSettlementTransition, "Settlement", previous, to_status,
                          SETTLEMENT_ALLOWED[previous])
    now = timezone.now()
    settlement.status = to_status
    fields = ["status", "updated_at"]
    if to_status == S.VERIFIED:
        settlement.verified_at = now
        fields.append("verified_at")
    elif to_status == S.SETTLED:
        settlement.settled_at = now
        fields.append("settled_at")
    elif to_status in (S.FAILED, S.TIMED_OUT):
        settlement.fail_reason = str((details or {}).get("reason", ""))[:2000]
        fields.append("fail_reason")
    settlement.save(update_fields=fields)
    SettlementTransition.objects.create(settlement=settlement, from_status=previous,
                                        to_status=to_status, at=now, actor=actor,
                                        details=details or {}, tx_hash=tx_hash)
    audit_record(event_type=f"settlement_{to_status}", actor=actor, entity_type="settlement",
                 entity_id=settlement.pk, user_id=settlement.execution.quote.user_id,
                 details={"from": previous, "to": to_status, "tx_hash": tx_hash, **(details or {})})
    return settlement


def _solana_leg(execution: Execution) -> tuple[str, dict[str, Any], str]:
    """(verdict, details, reason) for the execution's Solana transaction."""
    from solders.signature import Signature

    from execution.services.chain import solana_backend
    from execution.solana.backend import SolanaError

    if execution.status != ExecutionStatus.CONFIRMED or not execution.signature:
        return "failed", {"execution_status": execution.status}, "execution is not confirmed"
    try:
        state = solana_backend().signature_status(Signature.from_string(execution.signature))
    except SolanaError as exc:
        return "unknown", {"solana": f"unavailable: {type(exc).__name__}"}, "Solana unavailable"
    if state is None:
        return "unknown", {"solana": "signature not found yet"}, "signature not found"
    details = {"solana_signature": execution.signature, "slot": state.slot,
               "confirmation": state.confirmation_status}
    if state.err is not None:
        return "failed", {**details, "err": state.err}, "Solana transaction failed on chain"
    return "verified", details, ""


def _funding_leg(settlement: Settlement) -> tuple[str, dict[str, Any], str]:
    """(verdict, details, reason) for what paid the quote: a verified payment, booked, or a
    prepaid balance lock. Live mode re-reads the payment from its chain."""
    from settlement.services.balances import quote_is_balance_funded
    from settlement.verifiers import chain_mode_is_live, payment_verify

    quote = settlement.execution.quote
    payment = settlement.funding_payment
    if payment is None:
        if quote_is_balance_funded(quote_id=quote.pk):
            return "verified", {"funded_by": "prepaid balance"}, ""
        return "failed", {"funded_by": None}, "no payment and no balance lock funds this quote"
    details: dict[str, Any] = {"funded_by": "payment", "chain": payment.chain,
                               "tx_hash": payment.tx_hash, "amount": str(int(payment.amount))}
    if payment.quote_id != quote.pk or payment.status not in _PAID:
        return "failed", {**details, "status": payment.status}, "payment does not pay this quote"
    if int(payment.amount) < int(quote.total_cost):
        return "failed", details, "payment is below the quote's total cost"
    if not JournalEntry.objects.filter(reference=f"payment:{payment.chain}:{payment.tx_hash}").exists():
        return "failed", details, "payment is not booked"
    if not chain_mode_is_live():
        # Sandbox: the signed transaction was the evidence and was verified when received.
        return "verified", {**details, "source_check": "signed transaction (sandbox)"}, ""
    from settlement.chains.base import ChainUnavailable, PaymentInvalid

    try:
        on_chain = payment_verify(chain=payment.chain, tx_hash=payment.tx_hash,
                                  sender=payment.from_address)
    except ChainUnavailable:
        return "unknown", details, f"{payment.chain} unavailable"
    except PaymentInvalid as exc:
        if exc.code in (PaymentInvalid.NOT_FOUND, PaymentInvalid.NOT_FINAL):
            return "unknown", details, exc.message
        return "failed", {**details, "chain_says": exc.code}, exc.message
    if on_chain.amount != int(payment.amount) or not on_chain.successful:
        return "failed", {**details, "chain_amount": str(on_chain.amount)}, \
            "the chain's amount differs from the booked one"
    return "verified", {**details, "source_check": "re-read from chain"}, ""


def settlement_evidence(*, settlement: Settlement) -> SettlementEvidence:
    """Ask both chains (and the books) about one settlement. Network I/O: no transaction."""
    solana, solana_details, solana_reason = _solana_leg(settlement.execution)
    funding, funding_details, funding_reason = _funding_leg(settlement)
    details = {"solana": solana_details, "funding": funding_details}
    if solana == "failed":
        return SettlementEvidence("failed", details, solana_reason)
    if funding == "failed":
        return SettlementEvidence("failed", details, funding_reason)
    if "unknown" in (solana, funding):
        return SettlementEvidence("unknown", details, solana_reason or funding_reason)
    return SettlementEvidence("verified", details)


def settlement_verify(*, settlement_id: Any, actor: str = "system:settlement") -> Settlement:
    """pending (or timed_out) → verified when both legs are proven; → failed when a leg is
    provably wrong; unchanged when a chain cannot answer yet."""
    settlement = Settlement.objects.select_related("execution", "execution__quote",
                                                   "funding_payment").get(pk=settlement_id)
    if settlement.status not in (S.PENDING, S.TIMED_OUT):
        return settlement
    evidence = settlement_evidence(settlement=settlement)  # outside the transaction: chain I/O
    with transaction.atomic():
        settlement = _lock_settlement(settlement_id)
        if settlement.status not in (S.PENDING, S.TIMED_OUT):
            return settlement  # a twin decided first
        if evidence.verdict == "verified":
            settlement_transition(settlement=settlement, to_status=S.VERIFIED, actor=actor,
                                  details=evidence.details, tx_hash=settlement.execution.signature)
        elif evidence.verdict == "failed":
            settlement_transition(settlement=settlement, to_status=S.FAILED, actor=actor,
                                  details={**evidence.details, "reason": evidence.reason})
            _alert_settlement_failed(settlement, evidence.reason)
    return settlement


def settlement_settle(*, settlement_id: Any, actor: str = "system:settlement") -> Settlement:
    """verified → settled once the books carry the execution: the quote's revenue is earned
    (`revenue:<quote>`) and the Solana outflow is booked (`execution:<id>`)."""
    with transaction.atomic():
        settlement = _lock_settlement(settlement_id)
        if settlement.status != S.VERIFIED:
            return settlement
        execution = settlement.execution
        references = [f"revenue:{execution.quote_id}", f"execution:{execution.pk}"]
        booked = set(JournalEntry.objects.filter(reference__in=references)
                     .values_list("reference", flat=True))
        if f"revenue:{execution.quote_id}" not in booked:
            return settlement  # not earned yet: stays verified; the stuck finder shows it
        settlement_transition(settlement=settlement, to_status=S.SETTLED, actor=actor,
                              details={"entries": sorted(booked)}, tx_hash=execution.signature)
    return settlement


def settlement_fail(*, settlement_id: Any, reason: str, actor: str) -> Settlement:
    """Give up on a settlement, with a reason (an operator's decision or a proven mismatch)."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidRequest("A reason is required to fail a settlement")
    with transaction.atomic():
        settlement = _lock_settlement(settlement_id)
        settlement_transition(settlement=settlement, to_status=S.FAILED, actor=actor,
                              details={"reason": reason})
        _alert_settlement_failed(settlement, reason)
    return settlement


def settlement_time_out(*, settlement_id: Any, actor: str = "system:settlement") -> Settlement:
    """A pending settlement that nothing could verify within the stuck threshold."""
    with transaction.atomic():
        settlement = _lock_settlement(settlement_id)
        if settlement.status != S.PENDING:
            return settlement
        after = int(settings.SETTLEMENT_STUCK_AFTER_SECONDS)
        settlement_transition(settlement=settlement, to_status=S.TIMED_OUT, actor=actor,
                              details={"reason": f"not verified within {after} s"})
    return settlement


def settlement_retry_verification(*, settlement_id: Any, actor: str) -> Settlement:
    """An operator asks again (a stuck pending or a timed-out settlement), then settles it
    if the books already allow. Returns the settlement in whatever state that left it."""
    settlement = settlement_verify(settlement_id=settlement_id, actor=actor)
    if settlement.status == S.VERIFIED:
        settlement = settlement_settle(settlement_id=settlement_id, actor=actor)
    return settlement


def _alert_settlement_failed(settlement: Settlement, reason: str) -> None:
    from risk.services import alert_raise

    alert_raise(kind="settlement_failed", message=f"Settlement {settlement.pk} failed: {reason}",
                details={"settlement_id": str(settlement.pk),
                         "execution_id": str(settlement.execution_id), "reason": reason})


def settlements_advance(*, limit: int = 200) -> dict[str, int]:
    """The periodic pass: verify pending ones, settle verified ones, time out the ones
    still unverifiable past SETTLEMENT_STUCK_AFTER_SECONDS. Returns counts by new status."""
    counts: dict[str, int] = {}
    stuck_before = timezone.now() - dt.timedelta(seconds=int(settings.SETTLEMENT_STUCK_AFTER_SECONDS))
    rows = list(Settlement.objects.filter(status__in=[S.PENDING, S.VERIFIED])
                .order_by("created_at").values_list("pk", "status", "created_at")[:limit])
    for settlement_id, status, created_at in rows:
        try:
            if status == S.PENDING:
                settlement = settlement_verify(settlement_id=settlement_id)
                if settlement.status == S.PENDING and created_at < stuck_before:
                    settlement = settlement_time_out(settlement_id=settlement_id)
            else:
                settlement = Settlement.objects.get(pk=settlement_id)
            if settlement.status == S.VERIFIED:
                settlement = settlement_settle(settlement_id=settlement_id)
        except Exception:  # one bad row must not stop the pass
            logger.exception("settlement advance failed", extra={"settlement_id": str(settlement_id)})
            counts["error"] = counts.get("error", 0) + 1
            continue
        counts[settlement.status] = counts.get(settlement.status, 0) + 1
    return counts
