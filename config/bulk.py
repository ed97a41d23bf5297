"""Writing several rows in one statement.

`insert_together`: new rows of any tables as ONE statement (data-modifying CTEs), so they
commit together with no BEGIN/COMMIT round trips and no ORM insert compiled per row; the
statement is composed once per process and shape. `update_rows`: many rows, each with its
own values, in one UPDATE.

Django's `bulk_update` writes `SET col = CASE WHEN id = … THEN … END` per column and
resolves an expression per row and column: for the executor's batches it was the largest
CPU item of all (a third of a 30-execution batch). PostgreSQL's `UPDATE … FROM (VALUES …)`
says the same thing with one typed row per record, values adapted by the fields
themselves (`get_db_prep_save`), as the ORM would.
"""

from __future__ import annotations

from typing import Any, cast

from django.db import connection, models
from django.db.models import NOT_PROVIDED
from django.db.models.fields import AutoFieldMixin
from psycopg import sql

_insert_statements: dict[tuple[tuple[type[models.Model], int], ...],
                         tuple[str, list[list[models.Field[Any, Any]]]]] = {}


def _inserted_fields(model: type[models.Model]) -> list[models.Field[Any, Any]]:
    """The columns an INSERT names: not generated ones, not an auto-incremented key."""
    fields = [f for f in model._meta.concrete_fields
              if not f.generated and not (f.primary_key and isinstance(f, AutoFieldMixin))]
    if any(hasattr(f, "get_placeholder") or f.db_default is not NOT_PROVIDED for f in fields):
        raise TypeError(f"{model.__name__} needs the ORM's insert")
    return fields


def _insert_into(model: type[models.Model], fields: list[models.Field[Any, Any]],
                 rows: int = 1) -> sql.Composed:
    """`INSERT INTO table (columns) VALUES (placeholders), ...` for `rows` rows of `model`."""
    row = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(fields)))
    return sql.SQL("INSERT INTO {} ({}) VALUES {}").format(
        sql.Identifier(model._meta.db_table),
        sql.SQL(", ").join(sql.Identifier(str(f.column)) for f in fields),
        sql.SQL(", ").join([row] * rows))


_insert_if_new_statements: dict[tuple[type[models.Model], tuple[str, ...]],
                                tuple[str, list[models.Field[Any, Any]]]] = {}


def insert_if_new(row: models.Model, *, unique: tuple[str, ...]) -> bool:
    """INSERT the row unless one with the same `unique` fields exists (`ON CONFLICT DO
    NOTHING`): True when this call inserted it. No savepoint needed for the conflict
    (any other violation still raises)."""
    model = type(row)
    key = (model, unique)
    if key not in _insert_if_new_statements:
        fields = _inserted_fields(model)
        conflict = [cast(models.Field, model._meta.get_field(name)).column  # type: ignore[type-arg]
                    for name in unique]
        statement = sql.SQL("{} ON CONFLICT ({}) DO NOTHING RETURNING 1").format(
            _insert_into(model, fields),
            sql.SQL(", ").join(sql.Identifier(str(c)) for c in conflict)).as_string()
        _insert_if_new_statements[key] = (statement, fields)
    statement, fields = _insert_if_new_statements[key]
    params = [f.get_db_prep_save(f.pre_save(row, True), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        inserted = cursor.fetchone() is not None
    if inserted:
        row._state.adding = False
        row._state.db = connection.alias
    return inserted


def insert_together(*rows: models.Model) -> None:
    """INSERT new rows (of one table or several) in ONE statement, each field's value
    prepared as `Model.save` prepares it. Foreign keys between the rows are fine: the
    checks run at the end of the statement. Rows with an auto-incremented key do not get
    it back (nobody here needs it).

    One multi-row INSERT per table, its rows in the order given (so their ids keep that
    order). A sub-statement per row, as this once wrote, cost PostgreSQL twice the CPU
    for sixty rows (planning sixty INSERTs)."""
    by_model: dict[type[models.Model], list[models.Model]] = {}
    for row in rows:
        by_model.setdefault(type(row), []).append(row)
    shape = tuple((model, len(group)) for model, group in by_model.items())
    if shape not in _insert_statements:
        parts, fields_of = [], []
        for model, count in shape:
            fields = _inserted_fields(model)
            parts.append(_insert_into(model, fields, rows=count))
            fields_of.append(fields)
        ctes = [sql.SQL("{} AS ({})").format(sql.Identifier(f"row{n}"), part)
                for n, part in enumerate(parts[:-1])]
        composed = (sql.SQL("WITH {} {}").format(sql.SQL(", ").join(ctes), parts[-1])
                    if ctes else parts[-1])
        _insert_statements[shape] = (composed.as_string(), fields_of)
    statement, fields_of = _insert_statements[shape]
    params = [field.get_db_prep_save(field.pre_save(row, True), connection)
              for group, fields in zip(by_model.values(), fields_of, strict=True)
              for row in group for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
    for row in rows:
        row._state.adding = False
        row._state.db = connection.alias


def update_rows(model: type[models.Model], rows: dict[Any, dict[str, Any]]) -> int:
    """UPDATE each row (by primary key) with its own field values; rows changing
    different sets of fields go in one statement per set. Returns the rows updated."""
    by_fields: dict[tuple[str, ...], list[tuple[Any, dict[str, Any]]]] = {}
    for pk, values in rows.items():
        by_fields.setdefault(tuple(sorted(values)), []).append((pk, values))
    updated = 0
    for names, group in by_fields.items():
        updated += _update_group(model, names, group)
    return updated


def _update_group(model: type[models.Model], names: tuple[str, ...],
                  group: list[tuple[Any, dict[str, Any]]]) -> int:
    meta = model._meta
    pk_field = meta.pk
    assert pk_field is not None
    fields = [cast(models.Field, meta.get_field(name)) for name in names]  # type: ignore[type-arg]
    columns: list[str] = [str(pk_field.column), *(str(f.column) for f in fields)]
    casts = [pk_field.db_type(connection), *(f.db_type(connection) for f in fields)]
    row_sql = "(" + ", ".join(f"%s::{cast}" for cast in casts) + ")"
    params: list[Any] = []
    for pk, values in group:
        params.append(pk_field.get_db_prep_save(pk, connection))
        params += [f.get_db_prep_save(values[f.name], connection) for f in fields]
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    assignments = ", ".join(f"{quote(c)} = v.{quote(c)}" for c in columns[1:])
    sql = (f"UPDATE {table} SET {assignments} "  # noqa: S608 - names from the model, values bound
           f"FROM (VALUES {', '.join([row_sql] * len(group))}) "
           f"AS v({', '.join(quote(c) for c in columns)}) "
           f"WHERE {table}.{quote(columns[0])} = v.{quote(columns[0])}")
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)
