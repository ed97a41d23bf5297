"""Reconciliation running while executions land: no false mismatch.

The scheduled reconciliation runs every ten minutes whatever the traffic, and a mismatch
trips the circuit breaker (no quotes, no executions until an operator resets it). Books
and chain are read at different instants, so transactions landing meanwhile must be
covered by the in-flight allowance. Here the real worker executes a stream of paid quotes
(SOL and USDC) while payments keep committing, and this process runs the reconciliation's
checks back to back (each one as `reconcile_run` calls it, without tripping the breaker);
with books opened at the chain's balances, every run must be clean.
"""

from __future__ import annotations

import threading
import time

import pytest

from settlement.services.reconciliation import (
    check_chain_transactions,
    check_ledger_balanced,
    check_quotes_and_payments,
    check_treasury_balances,
    check_user_balances,
)
from tests.chaos.harness import ChaosStack, Customer, stack_env, wait_until
from tests.chaos.invariants import assert_invariants
from tests.chaos.kit import all_terminal, quote_statuses, report_figures

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]

QUOTES = 60


class FalseReconciliationMismatch(AssertionError):
    pass


# Regression guard: the books checks once read quotes, payments, executions and postings
# in separate autocommit snapshots, so commits landing between two reads showed up as
# false mismatches that tripped the breaker under load. They now read one snapshot.


def test_reconciliation_during_payments_and_executions_reports_no_false_mismatch(chain, opened_books):
    mismatches: list[dict] = []
    checks = [0]
    stop = threading.Event()

    def reconcile_continuously() -> None:
        from django.db import connections

        try:
            while not stop.is_set():
                for check in (check_ledger_balanced, check_user_balances, check_quotes_and_payments,
                              check_chain_transactions, check_treasury_balances):
                    mismatches.extend(check().mismatches)
                checks[0] += 1
        finally:
            connections.close_all()

    with ChaosStack(stack_env(Q_WORKERS="3")) as stack:
        customer = Customer(stack.base_url)
        quotes = []
        for i in range(QUOTES):
            if i % 3 == 2:
                quotes.append(customer.quote_usdc(10**6 + i, source_chain="stellar")[0])
            else:
                quotes.append(customer.quote_sol(2_000_000 + i, source_chain="near")[0])
        quote_ids = [q["quote_id"] for q in quotes]
        reconciler = threading.Thread(target=reconcile_continuously, daemon=True)
        reconciler.start()
        started = time.monotonic()
        try:
            for quote in quotes:
                customer.pay(quote)
                time.sleep(0.05)  # a steady stream, so the checks overlap landings throughout
            wait_until(lambda: all_terminal(quote_ids), timeout=90, what="every quote executed")
        finally:
            stop.set()
            reconciler.join(30)

    assert quote_statuses(quote_ids) == {"executed": QUOTES}
    report = assert_invariants()
    report_figures("reconcile_under_load", {
        "quotes": QUOTES, "reconciliations_during_load": checks[0],
        "false_mismatches": len(mismatches), "first": mismatches[:3],
        "load_s": round(time.monotonic() - started, 2), "invariants": report["checked"],
    })
    assert checks[0] >= 10, "too few reconciliation runs overlapped the executions"
    if mismatches:
        raise FalseReconciliationMismatch(f"{len(mismatches)} false mismatches in {checks[0]} runs: "
                                          f"{mismatches[:3]}")
