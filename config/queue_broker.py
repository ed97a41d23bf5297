"""django-q2's ORM broker with a hot path fit for one task per payment.

The stock broker claims a bulk of tasks with one SELECT and then one conditional UPDATE per
task, each its own commit (an fdatasync each with durable commits), and before each claim
and each acknowledgement it runs `close_old_connections`, which with CONN_HEALTH_CHECKS
turns the next query into two (a `SELECT 1` first). Here:

* a claim is ONE statement and one commit for the whole bulk, oldest first:
  `FOR UPDATE SKIP LOCKED` lets several clusters or pushers claim side by side without
  waiting on, or double-claiming, each other's rows (the stock conditional UPDATE's job);
* a task is queued by one fixed INSERT (no ORM compilation per task);
* claims and acknowledgements skip the per-call health check and instead, when the
  connection turns out dead (a database restart), run once more on a new one: both are
  safe to repeat (an unanswered claim only leaves rows locked until the retry delay, the
  at-least-once redelivery the queue has anyway; a repeated delete deletes nothing).

Everything else (fail, sizes, purge) is the stock broker's.
"""

from __future__ import annotations

from collections.abc import Callable
from time import sleep
from typing import Any, TypeVar

from django.db import InterfaceError, OperationalError, connections
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf

T = TypeVar("T")

_CLAIM = """
UPDATE django_q_ormq SET lock = %s
WHERE id IN (SELECT id FROM django_q_ormq WHERE key = %s AND lock < %s
             ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
RETURNING id, payload
"""
_ACKNOWLEDGE = "DELETE FROM django_q_ormq WHERE id = %s"
_ENQUEUE = "INSERT INTO django_q_ormq (key, payload, lock) VALUES (%s, %s, %s) RETURNING id"


def _once_more_if_disconnected(statement: Callable[[Any], T]) -> T:
    connection = connections[Conf.ORM]
    try:
        with connection.cursor() as cursor:
            return statement(cursor)
    except (OperationalError, InterfaceError):
        if connection.in_atomic_block:
            raise
        connection.close()  # dead since its last use: the next cursor reconnects
        with connection.cursor() as cursor:
            return statement(cursor)


class OrmBroker(ORM):  # type: ignore[misc]
    def enqueue(self, task: str) -> int:
        # A fixed statement: every accepted payment queues its execution, and the stock
        # `OrmQ.objects.create` compiled the INSERT each time. On the caller's connection,
        # so inside its transaction (config.tasks); never repeated: it may be mid-work.
        with connections[Conf.ORM].cursor() as cursor:
            cursor.execute(_ENQUEUE, [self.list_key or Conf.CLUSTER_NAME, task, timezone.now()])
            return int(cursor.fetchone()[0])

    def dequeue(self) -> list[tuple[int, str]] | None:
        def claim(cursor: Any) -> list[tuple[int, str]]:
            cursor.execute(_CLAIM, [self.timeout(None), self.list_key, timezone.now(), Conf.BULK])
            return sorted(cursor.fetchall())

        claimed = _once_more_if_disconnected(claim)
        if claimed:
            return claimed
        sleep(Conf.POLL)  # an empty queue: spare the CPU, as the stock broker does
        return None

    def acknowledge(self, task_id: int) -> None:
        _once_more_if_disconnected(lambda cursor: cursor.execute(_ACKNOWLEDGE, [task_id]))
