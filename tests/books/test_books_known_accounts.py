"""Ledger accounts a process remembers (settlement.ledger.known_accounts): a booking stops
asking PostgreSQL for accounts it has seen committed, and never hands out one that a
rolled-back transaction created or that a flush removed."""

from __future__ import annotations

import itertools

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from settlement.ledger import Leg, account_balance, account_code, ledger_post
from settlement.models import LedgerAccount, Posting

pytestmark = pytest.mark.django_db(transaction=True)

_references = itertools.count()


def _post(scope: str = "stellar", amount: int = 100) -> None:
    ledger_post(reference=f"known-accounts:{next(_references)}", kind="test", legs=[
        Leg(account_code("treasury", scope, "XLM"), "XLM", amount),
        Leg(account_code("customer_funds", scope, "XLM"), "XLM", -amount),
    ])


def _account_reads(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "settlement_ledgeraccount" in q["sql"]]


def test_accounts_seen_committed_are_not_read_again():
    with CaptureQueriesContext(connection) as first:
        _post()
    assert _account_reads(first)  # the first booking reads (and creates) them

    with CaptureQueriesContext(connection) as second:
        _post()
    assert _account_reads(second) == []
    assert account_balance(account_code("treasury", "stellar", "XLM")) == 200
    assert Posting.objects.filter(account__code=account_code("customer_funds", "stellar", "XLM")).count() == 2


def test_an_account_created_by_a_transaction_that_rolled_back_is_not_remembered():
    class Abandon(Exception):
        pass

    with pytest.raises(Abandon), transaction.atomic():
        _post(scope="near")
        raise Abandon
    assert not LedgerAccount.objects.filter(code__endswith=":near:XLM").exists()

    # Had the rolled-back ids been remembered, these postings would name accounts that do
    # not exist and the commit would fail on their foreign key.
    _post(scope="near")
    assert account_balance(account_code("treasury", "near", "XLM")) == 100


def test_a_flush_forgets_every_account():
    _post()
    first_ids = set(LedgerAccount.objects.values_list("pk", flat=True))

    call_command("flush", interactive=False, verbosity=0)
    _post()
    assert account_balance(account_code("treasury", "stellar", "XLM")) == 100
    assert set(LedgerAccount.objects.values_list("pk", flat=True)).isdisjoint(first_ids)
