"""Twenty workers handed the same quote at once put one transaction on chain."""

from __future__ import annotations

import threading

import pytest
from django.db import connections

from execution.models import Execution, ExecutionAttempt, ExecutionTransition
from execution.tasks import execute_quote
from quotes.models import QuoteTransition
from settlement.models import JournalEntry, Settlement
from tests.execution.conftest import assert_books_balanced, chain_transaction_count, sol_quote

pytestmark = pytest.mark.django_db(transaction=True)

WORKERS = 20


def _all_at_once(quote_id: str) -> list[object]:
    barrier = threading.Barrier(WORKERS)
    results: list[object] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            barrier.wait()
            result: object = execute_quote(quote_id)
        except BaseException as exc:  # surfaced below
            result = exc
        finally:
            connections.close_all()
        with lock:
            results.append(result)

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_twenty_concurrent_executions_of_one_quote_make_one_transaction(sandbox):
    amount = 7_777_777
    quote, recipient = sol_quote(sandbox, amount)
    transactions_before = chain_transaction_count(sandbox)

    results = _all_at_once(str(quote.pk))

    assert len(results) == WORKERS
    assert all(isinstance(r, dict) for r in results), results
    outcomes = [r["outcome"] for r in results]  # type: ignore[index]
    assert outcomes.count("confirmed") >= 1
    assert set(outcomes) <= {"confirmed", "busy"}
    assert sandbox.balance(recipient) == amount
    assert chain_transaction_count(sandbox) == transactions_before + 1
    assert Execution.objects.filter(quote=quote).count() == 1
    execution = Execution.objects.get(quote=quote)
    assert ExecutionAttempt.objects.filter(execution=execution).count() == 1
    assert {r["signature"] for r in results if r["outcome"] == "confirmed"} == {  # type: ignore[index]
        execution.signature}
    assert ExecutionTransition.objects.filter(execution=execution, to_status="confirmed").count() == 1
    assert QuoteTransition.objects.filter(quote=quote, to_status="executed").count() == 1
    assert JournalEntry.objects.filter(reference=f"execution:{execution.pk}").count() == 1
    assert Settlement.objects.filter(execution=execution).count() == 1
    assert_books_balanced()


def test_concurrent_executions_of_different_quotes_all_land(sandbox):
    quotes = [sol_quote(sandbox, 1_000_000 + n) for n in range(8)]
    transactions_before = chain_transaction_count(sandbox)
    results: dict[int, object] = {}

    def worker(n: int, quote_id: str) -> None:
        try:
            results[n] = execute_quote(quote_id)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(n, str(q.pk))) for n, (q, _) in enumerate(quotes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    # A worker takes other waiting quotes along in its batch; their own tasks then find
    # them driven by that worker ("busy") or already done.
    outcomes = [results[n]["outcome"] for n in range(8)]  # type: ignore[index]
    assert set(outcomes) <= {"confirmed", "busy"} and "confirmed" in outcomes, outcomes
    assert set(Execution.objects.filter(quote__in=[q for q, _ in quotes])
               .values_list("status", flat=True)) == {"confirmed"}
    assert ExecutionAttempt.objects.filter(execution__quote__in=[q for q, _ in quotes],
                                           state="landed").count() == 8
    assert [sandbox.balance(r) for _, r in quotes] == [1_000_000 + n for n in range(8)]
    assert chain_transaction_count(sandbox) == transactions_before + 8
    assert_books_balanced()
