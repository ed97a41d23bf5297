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
prepared block runs under `planned_each_time()` (see also
`quotes.services.quotes._reservations_statement`, which is planned afresh on purpose).

Bound server-side, Django sends a bare Python int inside an expression (`F("amount") + n`)
as int4. Too big for it, it either fails (a yoctoNEAR amount: OverflowError) or, seen in a
test, silently wraps (6,001,015,001 lamports added as 1,706,047,705). Amounts therefore go
into expressions as Decimal.

Django keeps prepared statements off by default for transaction-mode poolers: PgBouncer
handles psycopg's protocol-level prepared statements since 1.21
(`max_prepared_statements`); older ones must not sit between these processes and the
database. Statements inside still go through Django's cursor wrapper (error mapping,
query logging); the connection is this thread's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from django.db import connection
from django.db.backends.postgresql.base import Cursor, ServerBindingCursor


def prepared_statements() -> contextlib.AbstractContextManager[None]:
    """Bind server-side and prepare every statement on first use."""
    return _binding(ServerBindingCursor, prepare_threshold=0)


def planned_each_time() -> contextlib.AbstractContextManager[None]:
    """Django's own way back, inside a prepared block: values inlined, planned every time."""
    return _binding(Cursor, prepare_threshold=None)


@contextlib.contextmanager
def _binding(cursor_factory: type[Any], *, prepare_threshold: int | None) -> Iterator[None]:
    """Inside, this thread's connection makes its cursors with `cursor_factory` and
    `prepare_threshold`; after, as it did before (so the two nest)."""
    connection.ensure_connection()
    raw = connection.connection
    saved = raw.cursor_factory, raw.prepare_threshold
    raw.cursor_factory, raw.prepare_threshold = cursor_factory, prepare_threshold
    try:
        yield
    finally:
        raw.cursor_factory, raw.prepare_threshold = saved
