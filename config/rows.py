"""Model instances from a fixed raw statement, built the way the ORM builds them.

The hottest reads (a payment's quote by memo, the ledger accounts of an entry) run the
same statement thousands of times a minute. A QuerySet compiles its SQL every time, and
even `Model.objects.raw` maps the result's columns to fields again for every query; both
cost more CPU than PostgreSQL spends answering. `RowReader` works out the column list and
each field's converter once per model, then turns rows into instances with `from_db` and
each field's `from_db_value`, exactly as the ORM does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from django.db import connection, models
from psycopg import sql

from config.prepared import django_connection

M = TypeVar("M", bound=models.Model)


class RowReader(Generic[M]):
    """`reader.select` is `SELECT <every concrete column> FROM <table> <alias>`: append the
    rest of the statement and pass it to `all` or `first`. A statement joining several
    tables lists each reader's `columns` and builds each instance from its slice of the row
    with `instance`."""

    def __init__(self, model: type[M], *, alias: str = "t") -> None:
        fields = model._meta.concrete_fields
        self.model = model
        self.names = [f.attname for f in fields]
        self.converters = [(i, f.from_db_value)  # type: ignore[attr-defined]
                           for i, f in enumerate(fields) if hasattr(f, "from_db_value")]
        self.columns = sql.SQL(", ").join(
            sql.Identifier(alias, str(f.column)) for f in fields).as_string()
        self.select = sql.SQL("SELECT {} FROM {} {}").format(
            sql.SQL(self.columns), sql.Identifier(model._meta.db_table),
            sql.Identifier(alias)).as_string()

    def all(self, statement: str, params: Sequence[Any]) -> list[M]:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return [self.instance(row) for row in cursor.fetchall()]

    def first(self, statement: str, params: Sequence[Any]) -> M | None:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            row = cursor.fetchone()
        return None if row is None else self.instance(row)

    def instance(self, row: Sequence[Any]) -> M:
        """The model instance of one row (or slice of a row) in `columns`' order."""
        values = list(row)
        db = django_connection()
        for index, convert in self.converters:
            values[index] = convert(values[index], None, db)
        return self.model.from_db(db.alias, self.names, values)
