"""Waking the executor for committed quotes: one queued task per batch, not one per payment.

Every accepted payment used to queue its own `execute_quote`, but a worker's batch takes
every committed quote that is waiting (batch.py), so under load nine deliveries in ten
found their quote already executed. Each still cost its enqueue (signing, pickling, an
INSERT), a claim, the cluster's hops between processes, a read and an acknowledgement:
about 1 ms of CPU per payment on the two cores the executor shares with everything else.

So a newly committed quote asks for a wake-up (`execution_wake`, inside the transaction
that commits it), and queues `execute_waiting` only when none is pending. A worker that
runs one first takes it (`wakeup_taken`) and only then claims the waiting quotes. The
handshake that makes sure no committed quote is left behind:

* the requester holds a shared advisory lock (transaction-scoped) from BEFORE it reads the
  flag until it commits;
* the worker clears the flag (committed), then waits until it can take that lock
  exclusively (held by nobody for an instant), and only then claims.

A requester that saw the flag set read it before the clear committed, so it held the
shared lock when the clear committed: the worker's exclusive instant comes after that
requester's commit, and the claim, a later statement, sees its quote. A requester that
reads the flag after the clear finds it unset and queues a wake-up of its own.

The worker polls for the exclusive instant rather than queueing for it: a queued exclusive
request would hold up every new payment behind it until the old ones commit. After 20 ms
of misses it does queue, so a steady stream of payments cannot starve it. (Measured at
~150 payments/s: 2.5 polls per wake-up on average, one queued wait in 77 wake-ups.)

A wake-up whose task is lost (its worker killed before taking it) would leave the flag set:
a request made when it has been pending for EXECUTION_WAKEUP_STALE_SECONDS queues a new
one, and `execution_resume_waiting` (every minute) re-queues committed quotes anyway. An
extra wake-up is harmless: it finds nothing waiting.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db import connection

from config.tasks import enqueue_with_transaction

WAKE_TASK = "execution.tasks.execute_waiting"

# Advisory lock keys in the two-int4 space, which never meets the executions' bigint leases.
_LOCK = "1702, 1"

_HOLD_SHARED = f"SELECT pg_advisory_xact_lock_shared({_LOCK})"

# true: this request set the flag (or found no row at all, a flushed database), so it
# must queue the wake-up. A flag that is already set is left alone, unlocked: concurrent
# requests then read it without waiting on one another.
_REQUEST = """
WITH flipped AS (
    UPDATE execution_executionwakeup SET pending = true, requested_at = now()
    WHERE id = 1 AND (NOT pending OR requested_at < now() - %s * interval '1 second')
    RETURNING 1)
SELECT EXISTS (SELECT 1 FROM flipped) OR NOT EXISTS (SELECT 1 FROM execution_executionwakeup)
"""

_TAKE = """
INSERT INTO execution_executionwakeup (id, pending) VALUES (1, false)
ON CONFLICT (id) DO UPDATE SET pending = false WHERE execution_executionwakeup.pending
"""

_EXCLUSIVE_INSTANT = (f"SELECT CASE WHEN pg_try_advisory_lock({_LOCK}) "
                      f"THEN pg_advisory_unlock({_LOCK}) ELSE false END")
_POLLS_BEFORE_QUEUEING = 20


def execution_wake(quote_id: Any = None) -> bool:
    """Make sure a worker looks for committed quotes after the caller's transaction commits
    (call it inside that transaction, after the quote is committed). Returns whether this
    call queued the wake-up; `quote_id`, if given, is the one its batch takes first."""
    if not connection.in_atomic_block:
        raise RuntimeError("execution_wake must run inside the transaction that commits the quote")
    with connection.cursor() as cursor:
        # Two statements on purpose: the lock must be held before the flag is read (a
        # statement reads what had committed when it began).
        cursor.execute(_HOLD_SHARED)
        cursor.execute(_REQUEST, [float(settings.EXECUTION_WAKEUP_STALE_SECONDS)])
        needed = bool(cursor.fetchone()[0])
    if needed:
        enqueue_with_transaction(WAKE_TASK, str(quote_id) if quote_id else None,
                                 task_name=f"execute_waiting:{quote_id or 'more'}",
                                 group="execution")
    return needed


def wakeup_taken() -> None:
    """The worker's side, before it claims committed quotes: clear the flag, then wait out
    every transaction that may have seen it set (see the module's docstring)."""
    # Outside a transaction (as tasks run) the clear commits before the wait, as it must:
    # inside one (a test running a task in its own transaction) requesters would go on
    # reading the flag as set until that transaction ends.
    with connection.cursor() as cursor:
        cursor.execute(_TAKE)
        for _ in range(_POLLS_BEFORE_QUEUEING):
            cursor.execute(_EXCLUSIVE_INSTANT)
            if cursor.fetchone()[0]:
                return
            time.sleep(0.001)
        cursor.execute(f"SELECT pg_advisory_lock({_LOCK})")
        cursor.execute(f"SELECT pg_advisory_unlock({_LOCK})")
