"""Resolving an unmatched deposit moves its money once, even when two operators resolve
the same payment at the same moment (real threads, real PostgreSQL row locks)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from config.errors import ServiceError
from quotes.models import Quote, QuoteStatus
from settlement.ledger import unbalanced_entries
from settlement.models import FundingPayment, JournalEntry
from settlement.services.resolution import payment_resolve_unmatched
from tests.admin.admin_kit import unmatched_payment
from tests.factories import QuoteFactory, UserFactory


@pytest.mark.django_db(transaction=True)
def test_two_operators_resolving_one_payment_move_it_once(treasury):
    quotes = [QuoteFactory(user=UserFactory(), payment_address=treasury) for _ in range(2)]
    payment = unmatched_payment(treasury=treasury, amount=int(quotes[0].total_cost))
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def resolve(quote: Quote, operator: str) -> None:
        try:
            start.wait(timeout=10)
            payment_resolve_unmatched(payment_id=payment.pk, quote_id=quote.pk, operator=operator)
            outcomes.append("resolved")
        except ServiceError as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=resolve, args=(quote, f"operator:ops-{n}"))
               for n, quote in enumerate(quotes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(outcomes) == ["CONFLICT", "resolved"]
    payment.refresh_from_db()
    committed = Quote.objects.filter(status=QuoteStatus.COMMITTED)
    assert committed.count() == 1 and payment.quote_id == committed.get().pk
    assert JournalEntry.objects.filter(reference__startswith="unmatched_resolve:").count() == 1
    assert FundingPayment.objects.get(pk=payment.pk).status == "matched"
    assert unbalanced_entries() == []


@pytest.mark.django_db
def test_underpaying_or_expired_resolution_is_refused(treasury):
    quote = QuoteFactory(user=UserFactory(), payment_address=treasury)
    payment = unmatched_payment(treasury=treasury, amount=int(quote.total_cost) - 1)
    with pytest.raises(ServiceError) as refused:
        payment_resolve_unmatched(payment_id=payment.pk, quote_id=quote.pk, operator="operator:x")
    assert refused.value.code == "INVALID_REQUEST"
    payment.refresh_from_db()
    quote.refresh_from_db()
    assert payment.status == "unmatched" and quote.status == QuoteStatus.PENDING
