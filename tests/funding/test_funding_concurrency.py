"""Exactly once under real concurrency: real threads, each with its own PostgreSQL
connection, real commits (transaction=True), the django-q2 ORM broker (not sync)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from config.webhooks import webhook_sign
from quotes.models import QuoteStatus, QuoteTransition
from risk.models import AuditEvent
from settlement.ledger import unbalanced_entries
from settlement.models import FundingPayment, JournalEntry, Refund, UserBalance
from tests.factories import UserFactory
from tests.funding.kit import (
    balances,
    execution_tasks,
    post_webhook,
    stellar_envelope,
    stellar_quote,
    webhook_body,
)

pytestmark = pytest.mark.django_db(transaction=True)


def run_together(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Start `n` threads that call `work(i)` at the same instant; return results or errors."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except Exception as exc:  # surfaced by the assertions below
            results[i] = exc
        finally:
            connection.close()  # one connection per thread; never leak one past the test

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_fifty_identical_webhooks_make_one_payment_one_commit_one_execution(user, treasury, payer):
    from django_q.conf import Conf

    assert not Conf.SYNC  # tasks really go through the broker
    quote = stellar_quote(user, treasury)
    total = int(quote.total_cost)
    envelope = stellar_envelope(payer, treasury, total, memo_id=quote.payment_memo)
    body = webhook_body("stellar", memo=quote.payment_memo, amount=str(total), envelope_xdr=envelope)
    header = webhook_sign(body)

    def deliver(_: int) -> tuple[int, bool]:
        response = post_webhook(Client(), "stellar", body, signature=header)
        return response.status_code, response.json()["payment"]["replay"]

    results = run_together(50, deliver)

    assert [r for r in results if not isinstance(r, tuple)] == []
    assert {status for status, _ in results} == {200}
    assert sorted(replay for _, replay in results) == [False] + [True] * 49
    assert FundingPayment.objects.count() == 1
    assert QuoteTransition.objects.filter(quote=quote, to_status="committed").count() == 1
    assert JournalEntry.objects.count() == 1
    assert AuditEvent.objects.filter(event_type="payment_matched").count() == 1
    assert len(execution_tasks()) == 1 and len(execution_tasks(quote.pk)) == 1
    quote.refresh_from_db()
    assert quote.status == QuoteStatus.COMMITTED
    assert balances() == {"treasury:stellar:XLM": total, "customer_funds:stellar:XLM": -total}
    assert unbalanced_entries() == []


def test_ten_different_payments_for_one_quote_commit_once_and_refund_nine(user, treasury, payer):
    from settlement.services.funding import payment_submit

    quote = stellar_quote(user, treasury)
    total = int(quote.total_cost)
    envelopes = [stellar_envelope(payer, treasury, total, memo_id=quote.payment_memo) for _ in range(10)]

    outcomes = run_together(10, lambda i: payment_submit(chain="stellar", source="webhook",
                                                         envelope_xdr=envelopes[i]).status)

    assert sorted(outcomes) == ["duplicate"] * 9 + ["matched"]
    assert Refund.objects.filter(reason="duplicate").count() == 9
    assert QuoteTransition.objects.filter(quote=quote, to_status="committed").count() == 1
    assert len(execution_tasks()) == 1
    assert balances() == {"treasury:stellar:XLM": 10 * total, "customer_funds:stellar:XLM": -total,
                          "refunds_payable:stellar:XLM": -9 * total}
    assert unbalanced_entries() == []


def test_concurrent_deposits_to_one_balance_all_add_up(treasury, payer):
    from settlement.services.funding import payment_submit

    depositor = UserFactory(deposit_memo=777)
    envelopes = [stellar_envelope(payer, treasury, 1_000 + i, memo_id=777) for i in range(20)]

    outcomes = run_together(20, lambda i: payment_submit(chain="stellar", source="watcher",
                                                         envelope_xdr=envelopes[i]).status)

    assert outcomes == ["credited"] * 20
    expected = sum(1_000 + i for i in range(20))
    assert int(UserBalance.objects.get(user=depositor).amount) == expected
    assert balances()[f"user_balance:{depositor.pk}:XLM"] == -expected
    assert unbalanced_entries() == []
