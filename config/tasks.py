"""Queueing a django-q2 task so that it exists if, and only if, the caller's work commits.

With the ORM broker on the default database (the embedded setup, and the bench), the queue
row is written INSIDE the caller's transaction: it commits or rolls back with the work that
asked for it, the worker cannot see it before the commit, and a crash between the commit and
a later push cannot lose it (the transactional-outbox pattern, at no extra cost: no second
commit). With any other broker (Redis) or in sync mode (which would run the task right here,
inside the caller's transaction) the push waits for the commit instead; the periodic jobs
(recovery, resume of waiting quotes, webhook retries) cover a push lost to a crash there.
"""

from __future__ import annotations

import os
from typing import Any

from django.db import transaction

_broker: tuple[int, Any] | None = None  # (pid, broker) of this process


def _process_broker() -> Any:
    """One broker per process. django-q2's `async_task` builds a new one for every task
    when given none: for the ORM broker that ran close_old_connections (outside a
    transaction) and a cache look-up each time, ~0.15 ms of CPU per payment; for Redis, a
    new client. Brokers keep no per-call state (the ORM one uses the calling thread's
    connection), so threads share it; a forked child makes its own."""
    global _broker
    from django_q.brokers import get_broker

    if _broker is None or _broker[0] != os.getpid():
        _broker = (os.getpid(), get_broker())
    return _broker[1]


def _queue_is_in_database() -> bool:
    from django_q.conf import Conf

    return Conf.ORM == "default" and not Conf.SYNC


def enqueue_with_transaction(func: str, *args: Any, **options: Any) -> None:
    """`async_task(func, *args, **options)`, tied to the caller's transaction."""
    from django_q.tasks import async_task

    options.setdefault("broker", _process_broker())
    if _queue_is_in_database() or not transaction.get_connection().in_atomic_block:
        async_task(func, *args, **options)
    else:
        transaction.on_commit(lambda: async_task(func, *args, **options), robust=True)
