"""Server-side prepared statements for the hottest fixed work: `prepared_statements()`.

Django sends every statement as text with its values inlined (client-side binding), so
PostgreSQL parses, analyses and plans it again each time, and psycopg quotes every value
into the text. Inside `prepared_statements()` this thread's connection binds values
server-side and prepares each statement on first use: afterwards only its execution is
left, on both sides. Measured: a quote's insert (about half of the backend's CPU per quote
was parse, analyse and plan) and a payment's booking (backend CPU per payment 2.0-2.1 ->
1.3-1.4 ms, client -4% instructions).

Only for statements whose plan cannot go stale: inserts of values, look-ups and updates by
a unique key. A statement whose best plan depends on its values or on a table's growth
(a range over a skewed column, a sum over rows of one status) must stay outside: after
five executions PostgreSQL may keep a generic plan for it. Such a statement inside a
prepared block runs under `planned_each_time()`. A quote's one read
(`quotes.services.quotes._reads_statement`) is prepared although it sums over in-flight
quotes: that sum reads them through `quotes_in_flight()` (migration quotes/0007), whose
own cached plan is made with sequential scans off, so it stays on the status index.

Bound server-side, Django sends a bare Python int inside an expression (`F("amount") + n`)
as int4. Too big for it, it either fails (a yoctoNEAR amount: OverflowError) or, seen in a
test, silently wraps (6,001,015,001 lamports added as 1,706,047,705). Amounts therefore go
into expressions as Decimal.

Django keeps prepared statements off by default for transaction-mode poolers: PgBouncer
handles psycopg's protocol-level prepared statements since 1.21
(`max_prepared_statements`); older ones must not sit between these processes and the
database. Statements inside still go through Django's cursor wrapper (error mapping,
query logging); the connection is this thread's own.

`raw_cursor()` is a Django cursor for statements written with PostgreSQL's own `$1, $2, ...`
placeholders, sent as written and bound server-side. psycopg otherwise rewrites `%s` into
`$n` by parsing the statement in Python, about 1 µs per placeholder, and remembers the
result only for statements up to 4096 bytes and 50 parameters: `config.bulk`'s multi-row
statements (hundreds of placeholders in the batch executor) were parsed again every time.
Its statements are prepared inside `prepared_statements()` as any other; outside they are
bound server-side but not prepared (the connection's prepare_threshold decides, as ever),
so what is said above of a bare int in an expression holds for them everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.postgresql.base import Cursor, CursorMixin, ServerBindingCursor
from django.db.backends.utils import CursorWrapper


def prepared_statements() -> contextlib.AbstractContextManager[None]:
    """Bind server-side and prepare every statement on first use."""
    return _binding(ServerBindingCursor, prepare_threshold=0)


def planned_each_time() -> contextlib.AbstractContextManager[None]:
    """Django's own way back, inside a prepared block: values inlined, planned every time."""
    return _binding(Cursor, prepare_threshold=None)


class RawBindingCursor(CursorMixin, psycopg.RawCursor[Any]):
    """Django's `ServerBindingCursor` taking `$1, $2, ...`: the statement goes as written."""


@contextlib.contextmanager
def raw_cursor() -> Iterator[CursorWrapper]:
    """A cursor of this thread's connection (through Django's wrapper) for a statement with
    `$n` placeholders numbered in the order of its parameters. A cursor keeps the class it
    was made with, so the connection's factory is swapped only while it is made."""
    raw = _this_threads_connection()
    saved = raw.cursor_factory
    raw.cursor_factory = RawBindingCursor
    try:
        cursor = connection.cursor()
    finally:
        raw.cursor_factory = saved
    with cursor:
        yield cursor


def django_connection() -> Any:
    """This thread's Django connection itself. Fields adapt each value with the connection
    they are given, and the `django.db.connection` proxy looks the thread's one up again on
    every attribute read: ~40 look-ups per quote inserted through it."""
    return connections[DEFAULT_DB_ALIAS]


def _this_threads_connection() -> Any:
    """This thread's psycopg connection as its next `connection.cursor()` will find it.
    That call may first replace a connection failing Django's health check
    (CONN_HEALTH_CHECKS): done here instead, so a factory set afterwards is not set on a
    connection already closed."""
    db = django_connection()
    if db.connection is None or not getattr(db, "health_check_done", False):
        db.close_if_health_check_failed()
        db.ensure_connection()
    return db.connection


@contextlib.contextmanager
def _binding(cursor_factory: type[Any], *, prepare_threshold: int | None) -> Iterator[None]:
    """Inside, this thread's connection makes its cursors with `cursor_factory` and
    `prepare_threshold`; after, as it did before (so the two nest)."""
    raw = _this_threads_connection()
    saved = raw.cursor_factory, raw.prepare_threshold
    raw.cursor_factory, raw.prepare_threshold = cursor_factory, prepare_threshold
    try:
        yield
    finally:
        raw.cursor_factory, raw.prepare_threshold = saved
