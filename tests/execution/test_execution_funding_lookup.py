"""Which payment paid each quote of a batch (execution.services.outcomes.funding_payments_of):
the earliest matched or overpaid one, found by quote alone so the look-up stays as cheap
with a million payments on the books as with ten."""

from __future__ import annotations

import datetime as dt
import secrets

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from execution.services.outcomes import funding_payments_of
from settlement.models import FundingPayment
from tests.factories import QuoteFactory

pytestmark = pytest.mark.django_db


def _payment(quote, status: str, *, minutes_ago: int) -> FundingPayment:
    return FundingPayment.objects.create(
        chain="stellar", tx_hash=secrets.token_hex(32), status=status, quote=quote,
        user=quote.user, asset="XLM", amount=quote.total_cost, from_address="G" + "A" * 55,
        to_address="G" + "B" * 55, source="api",
        received_at=timezone.now() - dt.timedelta(minutes=minutes_ago))


def test_the_earliest_paying_payment_of_each_quote():
    paid_twice, overpaid, underpaid = QuoteFactory(), QuoteFactory(), QuoteFactory()
    first = _payment(paid_twice, "matched", minutes_ago=5)
    _payment(paid_twice, "duplicate", minutes_ago=9)  # earlier, but it paid nothing
    _payment(paid_twice, "matched", minutes_ago=1)
    over = _payment(overpaid, "overpaid", minutes_ago=2)
    _payment(underpaid, "underpaid", minutes_ago=3)

    found = funding_payments_of([paid_twice.pk, overpaid.pk, underpaid.pk])
    assert found == {paid_twice.pk: first, overpaid.pk: over}


def test_the_look_up_goes_by_quote_alone():
    """With both filters the planner may AND in the status index, whose matched entries are
    every payment ever taken: seen costing 2 ms a batch after 2,000 payments, growing."""
    quote = QuoteFactory()
    _payment(quote, "matched", minutes_ago=1)
    with CaptureQueriesContext(connection) as queries:
        funding_payments_of([quote.pk])
    [statement] = [q["sql"] for q in queries.captured_queries]
    where = statement.split(" WHERE ", 1)[1]
    assert "quote_id" in where and "status" not in where
