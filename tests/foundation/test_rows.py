"""config.rows: instances from a fixed statement equal the ORM's own, field by field."""

from __future__ import annotations

import pytest

from config.rows import RowReader
from quotes.models import Quote
from tests.factories import QuoteFactory

pytestmark = pytest.mark.django_db


def test_rows_read_by_a_fixed_statement_are_the_instances_the_orm_builds():
    quotes = [QuoteFactory(), QuoteFactory()]
    reader = RowReader(Quote)
    statement = reader.select + " WHERE t.id = ANY(%s) ORDER BY t.created_at"

    read = reader.all(statement, [[q.pk for q in quotes]])

    orm = list(Quote.objects.filter(pk__in=[q.pk for q in quotes]).order_by("created_at"))
    names = [f.attname for f in Quote._meta.concrete_fields]
    assert [[getattr(q, n) for n in names] for q in read] == [
        [getattr(q, n) for n in names] for q in orm]
    assert isinstance(read[0].instructions, list)  # JSON decoded, not text
    assert not read[0]._state.adding and read[0]._state.db == "default"
    assert reader.first(reader.select + " WHERE t.payment_memo = %s", ["no such memo"]) is None
