"""The pool's check of a connection it is about to hand out, without a round trip when the
connection has been quiet.

psycopg_pool's own `ConnectionPool.check_connection` sends an empty query and waits for
PostgreSQL's answer on every checkout: a full round trip before each request's first
statement (~8% of a web thread's sampled time in bench/quotes.py). A connection idle in the
pool receives nothing unless the server speaks first: the FATAL message and end of stream
of `pg_terminate_backend`, a server shutdown or crash, or an asynchronous notice. So a
socket with nothing to read is a connection that was fine when it went quiet; only a
readable (or hung-up) one pays for the real check, which raises on a dead connection so the
pool discards it and hands out another.

What this does not see, and the round trip would: a peer that vanished without a word (host
gone, network cut). The first statement then fails like any statement on a connection lost
mid-request (DATABASE_ERROR), and psycopg marks the connection broken, so the pool drops it.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool


def connection_is_quiet(conn: psycopg.Connection[Any]) -> bool:
    """Open, and nothing from the server waiting to be read (nor a hang-up)."""
    if conn.closed or conn.pgconn.status != pq.ConnStatus.OK:
        return False
    # poll(), not select(): a web process holding many sockets may number this one past
    # select()'s FD_SETSIZE (1024).
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return not poller.poll(0)


def check_quiet_connection(conn: psycopg.Connection[Any]) -> None:
    """Return if `conn` looks usable; raise (the pool then discards it) if it is not."""
    if not connection_is_quiet(conn):
        # Closed, something to read, or hung up: a real query decides (and raises on a
        # closed or broken connection).
        ConnectionPool.check_connection(conn)
