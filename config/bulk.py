"""Writing several rows in one statement.

`new_row`: a new instance, built faster than `Model(**values)`.
`insert_together`: new rows of any tables as ONE statement (data-modifying CTEs), so they
commit together with no BEGIN/COMMIT round trips and no ORM insert compiled per row; the
statement is composed once per process and shape. `update_rows`: many rows, each with its
own values, in one UPDATE.

Django's `bulk_update` writes `SET col = CASE WHEN id = … THEN … END` per column and
resolves an expression per row and column: for the executor's batches it was the largest
CPU item of all (a third of a 30-execution batch). PostgreSQL's `UPDATE … FROM (VALUES …)`
says the same thing with one typed row per record, values adapted by the fields
themselves (`get_db_prep_save`), as the ORM would.

Both write PostgreSQL's own `$1, $2, ...` and run on `config.prepared.raw_cursor()`: with
`%s`, psycopg parsed these long statements anew on every execution (it caches only short
ones), about 1 µs per placeholder. Their values are therefore bound server-side, prepared
or not: each one lands in a VALUES column of the INSERT's target or under an explicit cast,
never bare in an expression (see config.prepared on ints).
"""

from __future__ import annotations

import datetime as dt
import operator
import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar, cast

from django.conf import settings
from django.db import connection, models
from django.db.models import NOT_PROVIDED
from django.db.models.fields import AutoFieldMixin
from psycopg import sql

from config.prepared import django_connection, raw_cursor

M = TypeVar("M", bound=models.Model)

# -- new rows -------------------------------------------------------------------------------

_layouts: dict[type[models.Model],
               tuple[list[str], frozenset[str], list[Callable[[], Any]]]] = {}


def new_row(model: type[M], **values: Any) -> M:
    """`model(**values)`, built through `Model.__init__`'s positional path: every concrete
    field in order, its default where `values` has none. Values by attname (`user_id`, not
    `user`). Keywords make Django match each one against the model's fields: ~150,000
    instructions for a quote's 31 fields, against ~60,000 positionally."""
    layout = _layouts.get(model)
    if layout is None:
        fields = model._meta.concrete_fields
        names = [f.attname for f in fields]
        layout = _layouts[model] = (names, frozenset(names), [f.get_default for f in fields])
    names, known, defaults = layout
    if not values.keys() <= known:
        raise TypeError(f"{model.__name__} has no fields {sorted(values.keys() - known)}"
                        " (values go by attname: user_id, not user)")
    return model(*[values[name] if name in values else default()
                   for name, default in zip(names, defaults, strict=True)])

# -- values, prepared as the ORM prepares them --------------------------------------------
#
# `Field.get_db_prep_save` walks get_prep_value -> to_python -> the backend's adapt_* for
# every value: ~3 µs for a UUID, ~4 µs for an aware datetime, and the batch executor writes
# ~200 values per execution. For a value already of the exact type the chain would return
# unchanged on PostgreSQL, the preparer below returns it directly; anything else (a str for
# a UUID, a naive datetime, JSON, bytes, a subclass) takes the field's own path. Kept honest
# by tests/foundation/test_bulk_prepare.py, which compares both on every field of every model.

_Prepare = Callable[[Any, Any], Any]  # (value, connection) -> the value to bind
_preparers: dict[models.Field[Any, Any], _Prepare] = {}


class _AwareDatetime:
    """Marker: a `datetime` (exactly) with a tzinfo, under USE_TZ."""


class _FiniteDecimal:
    """Marker: a `Decimal` (exactly) that is finite (to_python refuses NaN and infinities)."""


# Field classes (exactly: a subclass may prepare differently) whose get_db_prep_save returns
# a value of this type unchanged on PostgreSQL. Not integers: psycopg 3's backend wraps them
# in Int2/Int4/Int8 for the column's size.
_UNCHANGED: dict[type[models.Field[Any, Any]], type] = {
    models.UUIDField: uuid.UUID,  # a native uuid column
    models.DateTimeField: _AwareDatetime,
    models.DecimalField: _FiniteDecimal,
    models.BooleanField: bool,
    models.CharField: str,
    models.TextField: str,
}


def _unchanged_type(field: models.Field[Any, Any]) -> type | None:
    if type(field) in (models.ForeignKey, models.OneToOneField):
        field = field.target_field  # type: ignore[attr-defined]  # what its prep delegates to
    return _UNCHANGED.get(type(field))


def _preparer(field: models.Field[Any, Any]) -> _Prepare:
    prepare = _preparers.get(field)
    if prepare is not None:
        return prepare
    slow = field.get_db_prep_save
    kind = _unchanged_type(field)
    if kind is None:
        prepare = slow
    elif kind is _AwareDatetime:
        use_tz = settings.USE_TZ

        def prepare(value: Any, db: Any) -> Any:
            if value is None or (type(value) is dt.datetime and value.tzinfo is not None
                                 and use_tz):
                return value
            return slow(value, db)
    elif kind is _FiniteDecimal:
        def prepare(value: Any, db: Any) -> Any:
            if value is None or (type(value) is Decimal and value.is_finite()):
                return value
            return slow(value, db)
    elif kind is bool:  # None stays with the field: a non-null BooleanField refuses it
        def prepare(value: Any, db: Any) -> Any:
            return value if type(value) is bool else slow(value, db)
    else:
        def prepare(value: Any, db: Any) -> Any:
            if value is None or type(value) is kind:
                return value
            return slow(value, db)
    _preparers[field] = prepare
    return prepare


def _value_of(field: models.Field[Any, Any]) -> Callable[[models.Model], Any]:
    """`field.pre_save(row, add=True)`: the attribute itself unless the field computes it
    (auto_now, auto_now_add, files)."""
    plain = (type(field).pre_save is models.Field.pre_save
             or (isinstance(field, models.DateField)
                 and type(field).pre_save in (models.DateField.pre_save,
                                              models.DateTimeField.pre_save)
                 and not field.auto_now and not field.auto_now_add))
    if plain:
        return operator.attrgetter(field.attname)
    return lambda row: field.pre_save(row, True)


# Per inserted column, how its value is read from a row and prepared: worked out once per
# statement shape, not per row.
_Column = tuple[Callable[[models.Model], Any], _Prepare]


def _columns(fields: list[models.Field[Any, Any]]) -> list[_Column]:
    return [(_value_of(f), _preparer(f)) for f in fields]


_insert_statements: dict[tuple[tuple[type[models.Model], int], ...],
                         tuple[str, list[list[_Column]]]] = {}


def _inserted_fields(model: type[models.Model]) -> list[models.Field[Any, Any]]:
    """The columns an INSERT names: not generated ones, not an auto-incremented key."""
    fields = [f for f in model._meta.concrete_fields
              if not f.generated and not (f.primary_key and isinstance(f, AutoFieldMixin))]
    if any(hasattr(f, "get_placeholder") or f.db_default is not NOT_PROVIDED for f in fields):
        raise TypeError(f"{model.__name__} needs the ORM's insert")
    return fields


def _placeholders(first: int, casts: list[str]) -> str:
    """One VALUES row: `($first::cast, $first+1::cast, ...)`, a cast per value ("" for none)."""
    return "(" + ", ".join(f"${n}{cast}" for n, cast in enumerate(casts, start=first)) + ")"


def _insert_into(model: type[models.Model], fields: list[models.Field[Any, Any]],
                 rows: int = 1, first: int = 1) -> sql.Composed:
    """`INSERT INTO table (columns) VALUES ($first, ...), ...` for `rows` rows of `model`,
    its placeholders numbered from `first`."""
    width = len(fields)
    return sql.SQL("INSERT INTO {} ({}) VALUES {}").format(
        sql.Identifier(model._meta.db_table),
        sql.SQL(", ").join(sql.Identifier(str(f.column)) for f in fields),
        sql.SQL(", ").join(sql.SQL(_placeholders(first + row * width, [""] * width))
                           for row in range(rows)))


_insert_if_new_statements: dict[tuple[type[models.Model], tuple[str, ...]],
                                tuple[str, list[_Column]]] = {}


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
        _insert_if_new_statements[key] = (statement, _columns(fields))
    statement, columns = _insert_if_new_statements[key]
    db = django_connection()
    params = [prepare(value_of(row), db) for value_of, prepare in columns]
    with raw_cursor() as cursor:
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
        parts, fields_of, first = [], [], 1
        for model, count in shape:  # in the order of the params below
            fields = _inserted_fields(model)
            parts.append(_insert_into(model, fields, rows=count, first=first))
            fields_of.append(fields)
            first += count * len(fields)
        ctes = [sql.SQL("{} AS ({})").format(sql.Identifier(f"row{n}"), part)
                for n, part in enumerate(parts[:-1])]
        composed = (sql.SQL("WITH {} {}").format(sql.SQL(", ").join(ctes), parts[-1])
                    if ctes else parts[-1])
        _insert_statements[shape] = (composed.as_string(),
                                     [_columns(fields) for fields in fields_of])
    statement, columns_of = _insert_statements[shape]
    db = django_connection()
    params = [prepare(value_of(row), db)
              for group, columns in zip(by_model.values(), columns_of, strict=True)
              for row in group for value_of, prepare in columns]
    with raw_cursor() as cursor:
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


_TYPE_MODIFIER = re.compile(r"\(\d+(?:,\s*\d+)?\)")  # varchar(16) -> varchar
_update_statements: dict[tuple[type[models.Model], tuple[str, ...], int],
                         tuple[str, list[models.Field[Any, Any]]]] = {}


def _update_group(model: type[models.Model], names: tuple[str, ...],
                  group: list[tuple[Any, dict[str, Any]]]) -> int:
    key = (model, names, len(group))
    if key not in _update_statements:
        _update_statements[key] = _update_statement(model, names, len(group))
    statement, fields = _update_statements[key]
    pk_field, changed = fields[0], fields[1:]
    db = django_connection()
    params: list[Any] = []
    prepare_pk, prepares = _preparer(pk_field), [(f.name, _preparer(f)) for f in changed]
    for pk, values in group:
        params.append(prepare_pk(pk, db))
        params += [prepare(values[name], db) for name, prepare in prepares]
    with raw_cursor() as cursor:
        cursor.execute(statement, params)
        return int(cursor.rowcount)


def _update_statement(model: type[models.Model], names: tuple[str, ...],
                      rows: int) -> tuple[str, list[models.Field[Any, Any]]]:
    """`UPDATE … FROM (VALUES …)` of `rows` rows setting the fields `names`, and the fields
    whose values its params are, row after row: the primary key, then those fields.
    The VALUES are cast to their columns' types (without a target column to give them one,
    PostgreSQL would take each for text), less any length or precision: a cast to
    varchar(16) cuts a longer value silently, where the assignment to the column refuses
    it, as the ORM's UPDATE would."""
    meta = model._meta
    pk_field = meta.pk
    assert pk_field is not None
    fields = [pk_field, *(cast(models.Field, meta.get_field(name))  # type: ignore[type-arg]
                          for name in names)]
    columns: list[str] = [str(f.column) for f in fields]
    casts = [f"::{_TYPE_MODIFIER.sub('', str(f.db_type(connection)))}" for f in fields]
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    assignments = ", ".join(f"{quote(c)} = v.{quote(c)}" for c in columns[1:])
    values = ", ".join(_placeholders(1 + row * len(fields), casts) for row in range(rows))
    statement = (f"UPDATE {table} SET {assignments} "  # noqa: S608 - names from the model
                 f"FROM (VALUES {values}) "
                 f"AS v({', '.join(quote(c) for c in columns)}) "
                 f"WHERE {table}.{quote(columns[0])} = v.{quote(columns[0])}")
    return statement, fields
