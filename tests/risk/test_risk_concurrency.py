"""Concurrent sessions against PostgreSQL: limits never overshoot, releases happen once.

Real threads, each with its own connection and transaction. The server's
max_connections (100) is shared with other test runs, so 100 executions run through a
pool of WORKERS concurrent sessions started together at a barrier; each holds its
transaction open a moment after reserving, so the sessions really contend for the rows.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from quotes.models import QuoteStatus
from quotes.services.transitions import lock_quote
from risk.errors import DailyLimitExceeded
from risk.models import AuditEvent, CircuitBreakerEvent, DailySpending, SpendReservation, UserDailySpending
from risk.services import (
    breaker_record_execution_outcome,
    risk_release_execution,
    risk_reserve_execution,
)
from tests.factories import QuoteFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

LAMPORTS = 10**9
WORKERS = 32


def today() -> dt.date:
    return timezone.now().astimezone(dt.UTC).date()


def run_concurrently(work: Callable[[Any], str], items: list[Any],
                     workers: int = WORKERS) -> list[tuple[Any, str]]:
    """Run `work(item)` for every item on `workers` threads released together."""
    pending: queue.Queue[Any] = queue.Queue()
    for item in items:
        pending.put(item)
    results: list[tuple[Any, str]] = []
    lock = threading.Lock()
    workers = min(workers, len(items))
    start = threading.Barrier(workers)

    def worker() -> None:
        try:
            start.wait()
            while True:
                try:
                    item = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    outcome = work(item)
                except Exception as exc:  # recorded, asserted on by the test
                    outcome = f"error:{type(exc).__name__}:{exc}"
                with lock:
                    results.append((item, outcome))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    return results


def test_100_concurrent_executions_against_a_limit_admitting_10(settings):
    settings.SOLANA_DAILY_LIMIT = Decimal("10")  # exactly ten 1-SOL executions
    settings.PER_TRANSACTION_LIMIT_SOL = Decimal("1")
    settings.USER_DAILY_LIMIT_SOL = Decimal("1000")
    users = [UserFactory() for _ in range(10)]
    quotes = [QuoteFactory(user=users[i % 10], status=QuoteStatus.COMMITTED,
                           committed_at=timezone.now(), max_lamports_spend=Decimal(LAMPORTS),
                           treasury_outflow_lamports=Decimal(LAMPORTS - 5_000),
                           destination_amount=Decimal(LAMPORTS))
              for i in range(100)]

    def execute(quote) -> str:
        # What the executor does: lock the quote, reserve, keep going in the same transaction.
        try:
            with transaction.atomic():
                risk_reserve_execution(quote=lock_quote(quote.pk))
                time.sleep(0.01)  # hold the counter rows while the others queue on them
            return "reserved"
        except DailyLimitExceeded:
            return "refused"

    results = run_concurrently(execute, quotes)

    outcomes = [outcome for _, outcome in results]
    assert len(outcomes) == 100
    assert outcomes.count("reserved") == 10, sorted(set(outcomes))
    assert outcomes.count("refused") == 90
    admitted = [quote for quote, outcome in results if outcome == "reserved"]
    assert set(SpendReservation.objects.values_list("quote_id", flat=True)) == {
        q.pk for q in admitted}
    solana = DailySpending.objects.get(chain="solana", day=today())
    assert int(solana.amount_spent) == sum(int(q.max_lamports_spend) for q in admitted)
    assert int(solana.amount_spent) == 10 * LAMPORTS
    assert solana.transaction_count == 10
    stellar = DailySpending.objects.get(chain="stellar", day=today())
    assert int(stellar.amount_spent) == sum(int(q.total_cost) for q in admitted)
    assert sum(int(r.amount_spent) for r in UserDailySpending.objects.filter(day=today())) == (
        10 * LAMPORTS)


def test_concurrent_reservations_of_one_quote_count_once():
    # Even a caller that forgot to lock the quote cannot reserve it twice.
    quote = QuoteFactory(status=QuoteStatus.COMMITTED, committed_at=timezone.now())

    def reserve(_: int) -> str:
        with transaction.atomic():
            risk_reserve_execution(quote=quote)
            time.sleep(0.01)
        return "ok"

    results = run_concurrently(reserve, list(range(12)))
    assert [outcome for _, outcome in results] == ["ok"] * 12
    assert SpendReservation.objects.filter(quote=quote).count() == 1
    solana = DailySpending.objects.get(chain="solana", day=today())
    assert (int(solana.amount_spent), solana.transaction_count) == (int(quote.max_lamports_spend), 1)


def test_concurrent_double_release_gives_back_once():
    kept = QuoteFactory(status=QuoteStatus.COMMITTED, committed_at=timezone.now())
    failed = QuoteFactory(status=QuoteStatus.COMMITTED, committed_at=timezone.now())
    for quote in (kept, failed):
        with transaction.atomic():
            risk_reserve_execution(quote=lock_quote(quote.pk))

    def release(_: int) -> str:
        with transaction.atomic():
            released = risk_release_execution(quote=failed)
            time.sleep(0.01)
        return "released" if released else "noop"

    results = run_concurrently(release, list(range(16)))
    outcomes = [outcome for _, outcome in results]
    assert outcomes.count("released") == 1
    assert outcomes.count("noop") == 15
    solana = DailySpending.objects.get(chain="solana", day=today())
    assert (int(solana.amount_spent), solana.transaction_count) == (int(kept.max_lamports_spend), 1)
    assert AuditEvent.objects.filter(event_type="spend_released").count() == 1


def test_concurrent_failures_are_all_counted_and_trip_once(settings):
    settings.CONSECUTIVE_FAILURE_THRESHOLD = 5

    def fail(_: int) -> str:
        breaker_record_execution_outcome(success=False)
        return "ok"

    run_concurrently(fail, list(range(20)), workers=20)
    from risk.models import CircuitBreaker

    breaker = CircuitBreaker.objects.get(pk=1)
    assert breaker.consecutive_failures == 20
    assert breaker.is_open
    assert CircuitBreakerEvent.objects.filter(kind="tripped").count() == 1
