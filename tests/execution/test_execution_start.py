"""Starting an execution: the risk controls decide first, and work interrupted between the
start and the first signature is picked up by recovery."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from execution.models import Execution
from execution.services.executor import execution_run, execution_start
from execution.services.recovery import execution_recover_stuck, execution_resume_waiting
from execution.tasks import execute_quote
from quotes.models import Quote
from risk.models import SpendReservation
from risk.services.breaker import breaker_reset, breaker_trip
from settlement.models import JournalEntry, Refund
from tests.execution.conftest import assert_books_balanced, chain_transaction_count, sol_quote
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _queued_quote_ids() -> list[str]:
    return [task.task["args"][0] for task in OrmQ.objects.all()]


def test_an_open_breaker_leaves_the_quote_committed_until_it_closes(sandbox):
    quote, recipient = sol_quote(sandbox, 1_500_000)
    breaker_trip(trigger="operator", reason="test: hold executions", actor="test")

    assert execute_quote(str(quote.pk))["outcome"] == "waiting"

    quote.refresh_from_db()
    assert quote.status == "committed"
    assert not Execution.objects.filter(quote=quote).exists()
    assert not SpendReservation.objects.filter(quote=quote).exists()
    assert sandbox.balance(recipient) == 0
    assert execution_resume_waiting(older_than_seconds=0) == 0  # still open: nothing moves

    operator = UserFactory(is_staff=True, is_superuser=True)
    breaker_reset(actor_user=operator, reason="test: incident over")  # runs the reset hook

    assert _queued_quote_ids() == [str(quote.pk)]
    assert execute_quote(str(quote.pk))["outcome"] == "confirmed"
    assert sandbox.balance(recipient) == 1_500_000


def test_resume_waiting_skips_fresh_and_started_quotes(sandbox):
    fresh, _ = sol_quote(sandbox, 1_000)
    old, _ = sol_quote(sandbox, 1_000)
    Quote.objects.filter(pk=old.pk).update(committed_at=timezone.now() - timezone.timedelta(minutes=5))
    started, _ = sol_quote(sandbox, 1_000)
    Quote.objects.filter(pk=started.pk).update(committed_at=timezone.now() - timezone.timedelta(minutes=5))
    execution_run(quote_id=started.pk)  # this one alone (the task would batch the others)

    assert execution_resume_waiting(older_than_seconds=30) == 1
    assert _queued_quote_ids() == [str(old.pk)]


def test_a_daily_limit_refusal_fails_the_quote_with_a_refund_and_sends_nothing(sandbox, settings):
    settings.SOLANA_DAILY_LIMIT = Decimal("0.001")  # 1,000,000 lamports a day
    quote, recipient = sol_quote(sandbox, 2_000_000)
    before = chain_transaction_count(sandbox)

    result = execute_quote(str(quote.pk))

    assert (result["outcome"], result["fail_reason"]) == ("failed", "RISK_REJECTED")
    execution = Execution.objects.get(quote=quote)
    assert "DAILY_LIMIT_EXCEEDED" in execution.error_message
    assert execution.attempt_count == 0
    quote.refresh_from_db()
    assert quote.status == "refund_due"
    assert Refund.objects.get(quote=quote).reason == "execution_failed"
    assert JournalEntry.objects.filter(reference=f"refund:execution:{quote.pk}").exists()
    assert not SpendReservation.objects.filter(quote=quote).exists()
    assert chain_transaction_count(sandbox) == before and sandbox.balance(recipient) == 0
    assert_books_balanced()


def test_a_crash_between_start_and_signing_is_recovered(sandbox):
    quote, recipient = sol_quote(sandbox, 2_500_000)
    outcome, execution = execution_start(quote_id=quote.pk)  # ...and the worker dies here
    assert outcome == "started" and execution.status == "pending"
    assert SpendReservation.objects.get(quote=quote).state == "reserved"

    assert execution_recover_stuck(older_than_seconds=0) == {"confirmed": 1}

    assert sandbox.balance(recipient) == 2_500_000
    assert SpendReservation.objects.get(quote=quote).state == "consumed"
    assert_books_balanced()
