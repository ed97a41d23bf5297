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

from typing import Any

from django.db import transaction


def _queue_is_in_database() -> bool:
    from django_q.conf import Conf

    return Conf.ORM == "default" and not Conf.SYNC


def enqueue_with_transaction(func: str, *args: Any, **options: Any) -> None:
    """`async_task(func, *args, **options)`, tied to the caller's transaction."""
    from django_q.tasks import async_task

    if _queue_is_in_database() or not transaction.get_connection().in_atomic_block:
        async_task(func, *args, **options)
    else:
        transaction.on_commit(lambda: async_task(func, *args, **options), robust=True)
