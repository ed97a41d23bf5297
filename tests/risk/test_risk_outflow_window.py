"""The hourly outflow the breaker checks, read from per-minute totals
(`risk.models.OutflowMinute`) kept as outflow is booked: the window is the current minute
and the sixty whole minutes before it, or exactly since an operator's reset; a retried
success adds nothing; batches booking into the same minute at once add up."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import connections, transaction
from django.db.models import Sum
from django.utils import timezone

from risk.models import CircuitBreaker, OutflowMinute, TreasuryOutflow
from risk.selectors import hourly_outflow_lamports
from risk.services.breaker import breaker_record_execution_successes
from tests.factories import QuoteFactory

NOON = dt.datetime(2026, 11, 21, 12, 30, 30, tzinfo=dt.UTC)
BALANCE = 10**15  # far from any trip


def book_at(monkeypatch, at: dt.datetime, outflows: dict) -> None:
    monkeypatch.setattr(timezone, "now", lambda: at)
    breaker_record_execution_successes(outflows=outflows, treasury_balance_lamports=BALANCE)


def quote_ids(count: int) -> list:
    return [QuoteFactory(status="committed", committed_at=timezone.now()).pk for _ in range(count)]


def assert_minutes_match_rows() -> None:
    rows = TreasuryOutflow.objects.aggregate(total=Sum("lamports"))["total"] or 0
    minutes = OutflowMinute.objects.aggregate(total=Sum("lamports"))["total"] or 0
    assert minutes == rows


@pytest.mark.django_db
def test_the_hour_is_the_current_minute_and_the_sixty_whole_minutes_before_it(monkeypatch):
    CircuitBreaker.objects.filter(pk=1).update(reset_at=None)
    late, first, last = quote_ids(3)
    book_at(monkeypatch, dt.datetime(2026, 11, 21, 11, 29, 59, 999999, tzinfo=dt.UTC), {late: 100})
    book_at(monkeypatch, dt.datetime(2026, 11, 21, 11, 30, 0, tzinfo=dt.UTC), {first: 200})
    book_at(monkeypatch, dt.datetime(2026, 11, 21, 12, 30, 10, tzinfo=dt.UTC), {last: 300})
    monkeypatch.setattr(timezone, "now", lambda: NOON)
    assert hourly_outflow_lamports() == 500
    assert list(OutflowMinute.objects.order_by("minute").values_list("minute", "lamports")) == [
        (dt.datetime(2026, 11, 21, 11, 29, tzinfo=dt.UTC), 100),
        (dt.datetime(2026, 11, 21, 11, 30, tzinfo=dt.UTC), 200),
        (dt.datetime(2026, 11, 21, 12, 30, tzinfo=dt.UTC), 300)]
    assert_minutes_match_rows()


@pytest.mark.django_db
def test_after_a_reset_mid_minute_only_what_left_after_it_counts(monkeypatch):
    before, after, next_minute = quote_ids(3)
    book_at(monkeypatch, dt.datetime(2026, 11, 21, 12, 10, 10, tzinfo=dt.UTC), {before: 100})
    CircuitBreaker.objects.filter(pk=1).update(
        reset_at=dt.datetime(2026, 11, 21, 12, 10, 20, tzinfo=dt.UTC))
    book_at(monkeypatch, dt.datetime(2026, 11, 21, 12, 10, 30, tzinfo=dt.UTC), {after: 200})
    book_at(monkeypatch, dt.datetime(2026, 11, 21, 12, 11, 5, tzinfo=dt.UTC), {next_minute: 400})
    monkeypatch.setattr(timezone, "now", lambda: NOON)
    assert hourly_outflow_lamports() == 600
    # A reset on a minute's first instant: that whole minute counts.
    CircuitBreaker.objects.filter(pk=1).update(
        reset_at=dt.datetime(2026, 11, 21, 12, 11, tzinfo=dt.UTC))
    assert hourly_outflow_lamports() == 400


@pytest.mark.django_db
def test_a_retried_success_adds_nothing_to_its_minute(monkeypatch):
    first, second = quote_ids(2)
    for _ in range(2):
        book_at(monkeypatch, NOON, {first: 1_000, second: 2_000})
    assert OutflowMinute.objects.get().lamports == 3_000
    assert_minutes_match_rows()


@pytest.mark.django_db(transaction=True)
def test_batches_booking_the_same_minute_at_once_add_up(monkeypatch):
    CircuitBreaker.objects.get_or_create(pk=1)  # a previous transactional test flushed it
    ids = quote_ids(4)
    monkeypatch.setattr(timezone, "now", lambda: NOON)  # both in one minute, whatever the clock
    first_booked, let_first_commit = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def first_batch() -> None:
        try:
            with transaction.atomic():
                breaker_record_execution_successes(outflows={ids[0]: 10, ids[1]: 20},
                                                   treasury_balance_lamports=BALANCE)
                first_booked.set()
                let_first_commit.wait(10)  # holds the minute's row while the second books
        except BaseException as exc:
            errors.append(exc)
        finally:
            first_booked.set()
            connections.close_all()

    def second_batch() -> None:
        try:
            breaker_record_execution_successes(outflows={ids[2]: 300, ids[3]: 400},
                                               treasury_balance_lamports=BALANCE)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    one = threading.Thread(target=first_batch)
    one.start()
    assert first_booked.wait(10)
    two = threading.Thread(target=second_batch)
    two.start()
    two.join(0.5)
    assert two.is_alive()  # waiting for the first batch's minute row
    let_first_commit.set()
    one.join(10)
    two.join(10)
    assert errors == []
    assert sum(OutflowMinute.objects.values_list("lamports", flat=True)) == 730
    assert_minutes_match_rows()
    assert hourly_outflow_lamports() == 730
