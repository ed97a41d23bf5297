"""Reconciliation: clean books pass; money moved on the chain behind our back, a landed but
unbooked transaction, or a tampered cached balance is found by the next run, written in the
report, alerted, and trips the circuit breaker. Stellar / NEAR balances are checked against
Horizon / NEAR RPC in live mode and reported as not checkable in sandbox mode."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.db.models import F
from solders.keypair import Keypair

from execution.models import Execution
from execution.services.chain import treasury_signer
from execution.solana import spl
from quotes.models import Quote
from risk.models import Alert, CircuitBreakerEvent
from risk.selectors import breaker_is_open
from settlement.models import ReconciliationReport, UserBalance
from settlement.services.reconciliation import reconcile_run, treasury_inventory_record
from tests.books.books_kit import NEAR, NEAR_TREASURY, XLM, Customer, deposit, pay
from tests.factories import QuoteFactory, UserFactory

pytestmark = pytest.mark.django_db


def _steal(sandbox, lamports: int) -> int:
    """A real transfer out of the treasury, signed with its key, sent straight to the chain
    (no quote, no execution, no books). Returns what the treasury lost, fee included."""
    before = sandbox.balance(sandbox.treasury)
    blockhash, last_valid = sandbox.backend.latest_blockhash()
    tx = spl.build_transaction(treasury_signer(),
                               [spl.sol_transfer(sandbox.treasury, Keypair().pubkey(), lamports)],
                               blockhash)
    spl.send_and_confirm(sandbox.backend, tx, last_valid)
    return before - sandbox.balance(sandbox.treasury)


def _statuses(report: ReconciliationReport) -> dict[str, str]:
    return {name: check["status"] for name, check in report.checks.items()}


def test_clean_books_reconcile_and_sandbox_chains_are_reported_not_checkable(opened_books):
    customer = Customer()
    deposit(customer, "stellar", 25 * XLM)
    deposit(customer, "near", 2 * NEAR)

    report = reconcile_run(triggered_by="test")

    assert report.outcome == "ok", report.mismatches
    assert set(_statuses(report).values()) == {"ok"}
    assets = report.checks["treasury_balances"]["details"]["assets"]
    assert assets["solana:SOL"]["status"] == "ok"
    assert assets["solana:SOL"]["chain"] == assets["solana:SOL"]["books"]
    assert assets[f"solana:{opened_books.usdc_mint}"]["status"] == "ok"
    # No ledger to read in sandbox: said so, not pretended equal.
    assert assets["stellar:XLM"]["status"] == "not_checkable"
    assert assets["stellar:XLM"]["books"] == str(25 * XLM)
    assert assets["near:NEAR"]["status"] == "not_checkable"
    assert "not checkable in sandbox" in report.checks["treasury_balances"]["summary"]
    assert not breaker_is_open()
    assert report.finished_at is not None


def test_lamports_moved_behind_our_back_are_found_reported_and_trip_the_breaker(opened_books):
    assert reconcile_run(triggered_by="test").outcome == "ok"

    lost = _steal(opened_books, 3_000_000)

    report = reconcile_run(triggered_by="test")

    assert report.outcome == "mismatch"
    (mismatch,) = report.mismatches
    assert mismatch["check"] == "treasury_balances"
    assert mismatch["asset"] == "SOL" and mismatch["difference"] == -lost
    assert ReconciliationReport.objects.filter(pk=report.pk, outcome="mismatch").exists()
    assert breaker_is_open()
    event = CircuitBreakerEvent.objects.get(kind="tripped")
    assert event.trigger == "reconciliation_mismatch" and str(report.pk) in event.reason
    assert Alert.objects.filter(kind="reconciliation_mismatch",
                                details__report_id=report.pk).exists()

    # The operator reviews it and books the loss; the books match again.
    treasury_inventory_record(chain="solana", asset="SOL", amount=-lost, actor="operator:ann",
                              reason="unauthorised transfer, investigated", reference="loss:1")
    assert reconcile_run(triggered_by="test").outcome == "ok"


def test_a_landed_transaction_still_in_flight_is_not_a_mismatch_but_unbooked_it_is(opened_books, settings):
    customer = Customer()
    quote = QuoteFactory(user=customer.user, payment_address=settings.STELLAR_TREASURY_ADDRESS,
                         max_lamports_spend=5_000_000 + 5_000, treasury_outflow_lamports=5_000_000,
                         destination_amount=5_005_000)
    pay("stellar", customer.stellar_payment(int(quote.total_cost), memo_id=quote.payment_memo))
    quote.refresh_from_db()
    assert quote.status == "committed"
    # The executor signed and sent it; it landed; the worker has not recorded it yet.
    sandbox = opened_books
    blockhash, last_valid = sandbox.backend.latest_blockhash()
    tx = spl.build_transaction(treasury_signer(),
                               [spl.sol_transfer(sandbox.treasury, Keypair().pubkey(), 5_000_000)],
                               blockhash)
    spl.send_and_confirm(sandbox.backend, tx, last_valid)
    execution = Execution.objects.create(quote=quote, status="submitted", signature=str(tx.signatures[0]))
    Quote.objects.filter(pk=quote.pk).update(status="executing")

    in_flight = reconcile_run(triggered_by="test")
    assert in_flight.outcome == "ok", in_flight.mismatches
    assert in_flight.checks["treasury_balances"]["details"]["assets"]["solana:SOL"]["in_flight"] == "5005000"

    # A bug marks it failed without booking what the chain did: both checks see it.
    Execution.objects.filter(pk=execution.pk).update(status="failed", fail_reason="OPERATOR")
    report = reconcile_run(triggered_by="test")
    assert report.outcome == "mismatch"
    problems = {(m["check"], m["problem"]) for m in report.mismatches}
    assert ("chain_transactions", "chain movement differs from the booked one") in problems
    assert ("treasury_balances", "treasury balance on chain differs from the books") in problems
    assert breaker_is_open()


def test_a_cached_balance_that_disagrees_with_its_postings_is_a_mismatch(opened_books):
    customer = Customer()
    deposit(customer, "stellar", 10 * XLM)
    UserBalance.objects.filter(user=customer.user).update(amount=F("amount") + 1)

    report = reconcile_run(triggered_by="test")

    assert report.outcome == "mismatch"
    (mismatch,) = report.mismatches
    assert mismatch["check"] == "user_balances"
    assert (mismatch["cached_amount"], mismatch["ledger_amount"]) == (str(10 * XLM + 1), str(10 * XLM))
    assert breaker_is_open()


def test_a_paid_quote_without_any_payment_is_a_mismatch(opened_books):
    QuoteFactory(user=UserFactory(), status="committed")

    report = reconcile_run(triggered_by="test")

    problems = [m["problem"] for m in report.mismatches if m["check"] == "quotes_and_payments"]
    assert "paid quote without a verified payment or balance lock" in problems


def test_reconcile_command_shows_progress_and_a_summary(opened_books):
    out, err = io.StringIO(), io.StringIO()

    call_command("reconcile", stdout=out, stderr=err)

    assert "[" + "#" * 30 + "] 6/6 done" in err.getvalue()
    assert "treasury_balances" in err.getvalue()
    summary = out.getvalue()
    assert "(ok)" in summary and "stellar:XLM: not checkable in sandbox" in summary

    _steal(opened_books, 1_000_000)
    with pytest.raises(CommandError) as failed:
        call_command("reconcile", stdout=io.StringIO(), stderr=io.StringIO())
    assert failed.value.returncode == 2


def test_live_stellar_and_near_treasuries_are_compared_with_the_chain(opened_books, horizon, near_rpc,
                                                                      settings):
    treasury_inventory_record(chain="stellar", asset="XLM", amount=1_000 * XLM, actor="test",
                              reason="opening inventory", reference="opening:stellar:XLM")
    treasury_inventory_record(chain="near", asset="NEAR", amount=100 * NEAR, actor="test",
                              reason="opening inventory", reference="opening:near:NEAR")
    customer = Customer()
    horizon.fund(customer.stellar.public_key, 100 * XLM)
    near_rpc.fund(customer.near_account, 10 * NEAR)
    deposit(customer, "stellar", 40 * XLM, horizon=horizon)
    deposit(customer, "near", 3 * NEAR, near_rpc=near_rpc)

    report = reconcile_run(triggered_by="test")

    assert report.outcome == "ok", report.mismatches
    assets = report.checks["treasury_balances"]["details"]["assets"]
    assert assets["stellar:XLM"] == {**assets["stellar:XLM"], "status": "ok",
                                     "chain": str(1_040 * XLM), "books": str(1_040 * XLM)}
    assert assets["near:NEAR"]["status"] == "ok" and assets["near:NEAR"]["chain"] == str(103 * NEAR)

    horizon.balances[settings.STELLAR_TREASURY_ADDRESS] -= 7 * XLM  # gone, unrecorded
    report = reconcile_run(triggered_by="test")
    assert [(m["chain_name"], m["difference"]) for m in report.mismatches] == [("stellar", -7 * XLM)]
    assert breaker_is_open()
    assert NEAR_TREASURY  # the NEAR treasury still matched


def test_a_report_left_running_by_a_dead_run_is_closed_by_the_next_one(opened_books):
    abandoned = ReconciliationReport.objects.create(triggered_by="schedule")

    report = reconcile_run(triggered_by="test")

    abandoned.refresh_from_db()
    assert abandoned.outcome == "error" and "abandoned" in abandoned.checks
    assert report.outcome == "ok"
