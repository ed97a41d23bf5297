"""config.bulk: several tables' rows in one statement, read back exactly as the ORM wrote
them, whether a table gets one row (VALUES) or several (one array per column)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.db import connection, transaction
from django.db.utils import IntegrityError
from django.test.utils import CaptureQueriesContext

from config.bulk import insert_together, update_rows
from quotes.models import QuoteTransition
from risk.models import AuditEvent
from tests.factories import QuoteFactory, UserFactory

pytestmark = pytest.mark.django_db

AWKWARD = [
    {"quote": 'say "hi"', "back\\slash": "a\\b", "braces": "{not,an,array}", "nul": None},
    {"unicode": "Grüße ✓ 💸", "nested": {"list": [1, 2.5, "x", None, True]}, "empty": {}},
    {},
]


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def test_several_rows_of_several_tables_go_in_one_statement_and_read_back_exactly():
    user = UserFactory()
    quote = QuoteFactory(user=user)
    at = dt.datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=dt.UTC)
    audits = [AuditEvent(event_type="bulk_test", actor="test", entity_type="quote",
                         entity_id=str(n), user_id=user.pk if n else None, details=details,
                         created_at=at + dt.timedelta(microseconds=n))
              for n, details in enumerate(AWKWARD)]
    moves = [QuoteTransition(quote=quote, from_status=a, to_status=b, actor="test", at=at,
                             details={"n": n}, tx_hash="")
             for n, (a, b) in enumerate([("pending", "committed"), ("committed", "executing")])]

    with CaptureQueriesContext(connection) as queries:
        insert_together(*audits, *moves)

    assert len(queries) == 1
    stored = list(AuditEvent.objects.filter(event_type="bulk_test").order_by("entity_id"))
    assert [(a.pk, a.details, a.user_id, a.created_at) for a in stored] == [
        (a.pk, a.details, a.user_id, a.created_at) for a in audits]
    assert list(QuoteTransition.objects.filter(quote=quote).order_by("id").values_list(
        "from_status", "to_status", "details")) == [
        ("pending", "committed", {"n": 0}), ("committed", "executing", {"n": 1})]
    assert all(not row._state.adding for row in [*audits, *moves])


def test_one_row_and_many_rows_of_a_table_are_the_same_insert():
    one = AuditEvent(event_type="bulk_one", actor="test", details=AWKWARD[0])
    insert_together(one)
    many = [AuditEvent(event_type="bulk_many", actor="test", details=d) for d in AWKWARD]
    insert_together(*many)

    assert AuditEvent.objects.get(event_type="bulk_one").details == AWKWARD[0]
    stored = AuditEvent.objects.filter(event_type="bulk_many").values_list("details", flat=True)
    assert sorted(map(canonical, stored)) == sorted(map(canonical, AWKWARD))


def test_a_violation_in_any_row_writes_none_of_them():
    quote = QuoteFactory()
    rows = [AuditEvent(event_type="bulk_rollback", actor="test") for _ in range(3)]
    bad = QuoteTransition(quote=quote, from_status="pending", to_status="pending", actor="t")

    with pytest.raises(IntegrityError), transaction.atomic():
        insert_together(*rows, bad, bad)

    assert not AuditEvent.objects.filter(event_type="bulk_rollback").exists()


def test_update_rows_gives_each_row_its_own_values():
    quotes = [QuoteFactory() for _ in range(3)]
    updated = update_rows(type(quotes[0]), {
        quotes[0].pk: {"status": "committed"}, quotes[1].pk: {"status": "cancelled"}})

    assert updated == 2
    assert [type(q).objects.get(pk=q.pk).status for q in quotes] == [
        "committed", "cancelled", quotes[2].status]
