"""Settlements (seed 004): opened when an execution confirms, verified against both chains,
settled when the books carry it; stuck ones are found, timed out, retried or failed by an
operator; every move leaves a transition row (from, to, at, actor, details, tx hash)."""

from __future__ import annotations

import datetime as dt

import pytest
from solders.keypair import Keypair

from config.errors import ServiceError
from execution.models import Execution
from execution.tasks import execute_quote
from risk.models import Alert
from settlement.models import FundingPayment, Settlement, SettlementStatus
from settlement.selectors import (
    settlement_history,
    settlements_by_status,
    settlements_for_user,
    settlements_stuck,
)
from settlement.services.reconciliation import reconcile_run
from settlement.services.settlements import (
    settlement_fail,
    settlement_retry_verification,
    settlement_settle,
    settlement_verify,
    settlements_advance,
)
from tests.books.books_kit import XLM, Customer, new_quote, pay_quote, sol_transfer_work

pytestmark = pytest.mark.django_db(transaction=True)


def _executed(customer: Customer, chain: str = "stellar", lamports: int = 2_000_000, **chains):
    quote = new_quote(customer, chain, sol_transfer_work(Keypair().pubkey(), lamports))
    outcome = pay_quote(customer, quote, **chains)
    assert outcome.committed
    assert execute_quote(str(quote.pk))["outcome"] == "confirmed"
    return Settlement.objects.get(execution__quote=quote)


def test_executed_quote_is_verified_on_both_chains_then_settled(opened_books):
    customer = Customer()
    settlement = _executed(customer)
    assert settlement.status == "pending"

    assert settlements_advance() == {"settled": 1}

    settlement.refresh_from_db()
    assert settlement.status == "settled"
    assert settlement.verified_at is not None and settlement.settled_at is not None
    history = list(settlement_history(settlement=settlement).values_list("from_status", "to_status"))
    assert history == [("", "pending"), ("pending", "verified"), ("verified", "settled")]
    verified = settlement.transitions.get(to_status="verified")
    assert verified.tx_hash == settlement.execution.signature
    assert verified.details["solana"]["solana_signature"] == settlement.execution.signature
    assert verified.details["funding"]["tx_hash"] == settlement.source_tx_hash
    assert list(settlements_for_user(user=customer.user)) == [settlement]
    assert list(settlements_by_status(status="settled")) == [settlement]
    assert reconcile_run(triggered_by="test").outcome == "ok"


def test_near_funded_settlement_is_verified_too(opened_books):
    settlement = _executed(Customer(), chain="near")
    settlement = settlement_retry_verification(settlement_id=settlement.pk, actor="operator:ann")
    assert settlement.status == "settled"
    assert int(settlement.source_amount) > 0 and settlement.funding_payment.chain == "near"


def test_live_mode_re_reads_the_payment_from_its_chain(opened_books, horizon):
    customer = Customer()
    horizon.fund(customer.stellar.public_key, 10_000 * XLM)
    settlement = _executed(customer, horizon=horizon)

    settlement = settlement_verify(settlement_id=settlement.pk)

    assert settlement.status == "verified"
    details = settlement.transitions.get(to_status="verified").details
    assert details["funding"]["source_check"] == "re-read from chain"


def test_unverifiable_settlement_is_stuck_then_timed_out_then_retried(opened_books, settings):
    settlement = _executed(Customer())
    real_signature = settlement.execution.signature
    # The chain does not (yet) know the signature we recorded: no verdict.
    Execution.objects.filter(pk=settlement.execution_id).update(
        signature=str(Keypair().sign_message(b"unknown")))
    assert settlement_verify(settlement_id=settlement.pk).status == "pending"
    assert list(settlements_stuck()) == []

    old = settlement.created_at - dt.timedelta(hours=2)
    Settlement.objects.filter(pk=settlement.pk).update(created_at=old)
    assert [s.pk for s in settlements_stuck()] == [settlement.pk]
    assert settlements_advance() == {"timed_out": 1}
    settlement.refresh_from_db()
    assert settlement.status == "timed_out" and "not verified within 3600 s" in settlement.fail_reason
    assert [s.pk for s in settlements_stuck()] == [settlement.pk]  # waits for an operator

    # The operator finds the right signature and retries: verified, then settled.
    Execution.objects.filter(pk=settlement.execution_id).update(signature=real_signature)
    settlement = settlement_retry_verification(settlement_id=settlement.pk, actor="operator:ann")
    assert settlement.status == "settled"
    assert list(settlement.transitions.values_list("to_status", "actor"))[-3:] == [
        ("timed_out", "system:settlement"), ("verified", "operator:ann"), ("settled", "operator:ann")]
    assert list(settlements_stuck()) == []


def test_operator_fails_a_settlement_with_a_reason(opened_books):
    settlement = _executed(Customer())
    with pytest.raises(ServiceError):
        settlement_fail(settlement_id=settlement.pk, reason="  ", actor="operator:ann")

    failed = settlement_fail(settlement_id=settlement.pk, reason="payment reversed by the bank",
                             actor="operator:ann")

    assert failed.status == "failed" and failed.fail_reason == "payment reversed by the bank"
    assert Alert.objects.filter(kind="settlement_failed").exists()
    assert settlement_settle(settlement_id=settlement.pk).status == "failed"  # final
    with pytest.raises(ServiceError) as refused:
        settlement_fail(settlement_id=settlement.pk, reason="again", actor="operator:ann")
    assert refused.value.code == "INVALID_STATE_TRANSITION"


def test_a_settlement_whose_funding_does_not_pay_the_quote_fails(opened_books):
    settlement = _executed(Customer())
    # A tampered row: the payment no longer covers the quote.
    FundingPayment.objects.filter(pk=settlement.funding_payment_id).update(amount=1)

    settlement = settlement_verify(settlement_id=settlement.pk)

    assert settlement.status == SettlementStatus.FAILED
    assert "below the quote's total cost" in settlement.fail_reason
