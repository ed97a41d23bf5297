"""Wake-ups: a committed quote queues `execute_waiting` only when none is pending, and no
committed quote is ever left waiting for a wake-up that looked before it committed."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time

import pytest
from django.db import connections, transaction
from django.utils import timezone
from django_q.models import OrmQ

from execution.models import ExecutionWakeup
from execution.services.wakeup import WAKE_TASK, execution_wake, wakeup_taken
from execution.tasks import execute_quote, execute_waiting
from quotes.models import Quote
from tests.execution.conftest import assert_books_balanced, in_thread, sol_quote
from tests.funding.kit import run_queued

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def wakeup_row(db):
    """The row the migration makes (a transactional test's flush removes it)."""
    ExecutionWakeup.objects.get_or_create(pk=1)


def _wake_tasks() -> list[OrmQ]:
    return [task for task in OrmQ.objects.order_by("id") if task.func() == WAKE_TASK]


def _commit_and_wake(sandbox, lamports: int = 1_000_000) -> Quote:
    """A quote committed in its own transaction, asking for a wake-up as payments do."""
    with transaction.atomic():
        quote, _ = sol_quote(sandbox, lamports)
        execution_wake(quote.pk)
    return quote


def _statuses(quotes: list[Quote]) -> list[str]:
    by_id = dict(Quote.objects.filter(pk__in=[q.pk for q in quotes]).values_list("pk", "status"))
    return [by_id[q.pk] for q in quotes]


def test_a_wake_up_is_queued_only_when_none_is_pending(sandbox):
    first = _commit_and_wake(sandbox)
    assert [t.args() for t in _wake_tasks()] == [(str(first.pk),)]
    _commit_and_wake(sandbox)
    _commit_and_wake(sandbox)
    assert len(_wake_tasks()) == 1  # folded into the pending one

    wakeup_taken()  # a worker starts on it
    third = _commit_and_wake(sandbox)
    assert [t.args() for t in _wake_tasks()][1:] == [(str(third.pk),)]


def test_one_wake_up_executes_every_quote_that_counted_on_it(sandbox):
    quotes = [_commit_and_wake(sandbox, 1_000_000 + n) for n in range(4)]
    assert len(_wake_tasks()) == 1

    (result,) = run_queued(WAKE_TASK)

    assert result["outcome"] == "confirmed"  # the asking quote's own answer
    assert _statuses(quotes) == ["executed"] * 4
    assert _wake_tasks() == []
    assert_books_balanced()


def test_a_wake_up_whose_quote_went_with_another_batch_still_takes_the_others(sandbox, settings):
    asking = _commit_and_wake(sandbox)
    later = _commit_and_wake(sandbox)
    # Another worker's batch (a task for one quote) took only the asking quote along.
    settings.EXECUTION_BATCH_SIZE = 1
    assert execute_quote(str(asking.pk))["outcome"] == "confirmed"
    settings.EXECUTION_BATCH_SIZE = 32
    assert _statuses([asking, later]) == ["executed", "committed"]

    assert execute_waiting(str(asking.pk))["outcome"] == "batch"
    assert _statuses([later]) == ["executed"]


def test_a_stale_or_missing_wake_up_is_queued_again(sandbox):
    _commit_and_wake(sandbox)
    ExecutionWakeup.objects.filter(pk=1).update(
        requested_at=timezone.now() - dt.timedelta(seconds=60))  # its worker was killed
    _commit_and_wake(sandbox)
    assert len(_wake_tasks()) == 2

    ExecutionWakeup.objects.all().delete()  # a flushed database: never folded, never lost
    _commit_and_wake(sandbox)
    _commit_and_wake(sandbox)
    assert len(_wake_tasks()) == 4
    wakeup_taken()
    assert ExecutionWakeup.objects.get(pk=1).pending is False


def test_a_full_batch_wakes_another_worker_for_the_rest(sandbox, settings):
    settings.EXECUTION_BATCH_SIZE = 2
    quotes = [_commit_and_wake(sandbox, 1_000_000 + n) for n in range(5)]
    assert len(_wake_tasks()) == 1

    runs = 0
    while _wake_tasks():
        run_queued(WAKE_TASK)
        runs += 1
    assert _statuses(quotes) == ["executed"] * 5
    assert runs == 3  # 2 + 2 + 1: each full batch queued the next wake-up


def test_the_worker_waits_for_a_payment_that_read_the_wake_up_as_pending(sandbox):
    """The dangerous interleaving: a payment finds a wake-up pending (so queues none), and
    that wake-up's worker starts before the payment commits. The worker must not claim
    until the payment has committed, or the quote would wait for the minute job."""
    _commit_and_wake(sandbox)
    run_queued(WAKE_TASK)
    _commit_and_wake(sandbox)  # a pending wake-up, its task queued
    (pending_task,) = _wake_tasks()
    woke, release = threading.Event(), threading.Event()

    def payment() -> Quote:
        with transaction.atomic():
            quote, _ = sol_quote(sandbox, 1_500_000)
            assert execution_wake(quote.pk) is False  # folded into the pending wake-up
            woke.set()
            assert release.wait(10)
        return quote

    paying, paid = in_thread(payment)
    assert woke.wait(10)
    worker, result = in_thread(lambda: execute_waiting(*pending_task.args()))
    worker.join(0.5)
    assert worker.is_alive(), "the worker claimed while a payment that counted on it was open"

    release.set()
    paying.join(10)
    worker.join(30)
    (quote,) = paid
    assert not worker.is_alive() and not isinstance(result[0], BaseException), result
    assert _statuses([quote]) == ["executed"]


def test_racing_payments_and_workers_leave_no_quote_behind(sandbox):
    """Four threads commit quotes (each asking for a wake-up) while two workers run the
    queued wake-ups as they appear, through the real ORM broker's claims. Every quote is
    executed by a wake-up (no minute job here), with far fewer tasks than quotes."""
    from django_q.brokers import get_broker
    from django_q.signing import SignedPackage

    committed: list[Quote] = []
    committing = threading.Event()
    committing.set()
    tasks_run: list[str] = []
    lock = threading.Lock()

    def commit_many(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(8):
            quote = _commit_and_wake(sandbox, 1_000_000 + rng.randrange(1000))
            with lock:
                committed.append(quote)
            time.sleep(rng.uniform(0, 0.02))

    def work() -> None:
        broker = get_broker()
        while True:
            claimed = broker.dequeue() or []
            for ack_id, payload in claimed:
                task = SignedPackage.loads(payload)
                if task["func"] == WAKE_TASK:
                    execute_waiting(*task["args"])
                    with lock:
                        tasks_run.append(task["func"])
                broker.acknowledge(ack_id)
            if not claimed and not committing.is_set():
                return

    committers = [in_thread(lambda seed=seed: commit_many(seed)) for seed in range(4)]
    workers = [in_thread(work) for _ in range(2)]
    for thread, out in committers:
        thread.join(120)
        assert out == [None], out
    committing.clear()
    for thread, out in workers:
        thread.join(120)
        assert out == [None], out
    connections.close_all()

    assert len(committed) == 32
    assert _statuses(committed) == ["executed"] * 32
    assert 1 <= len(tasks_run) < 32
    assert_books_balanced()
