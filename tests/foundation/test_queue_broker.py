"""The task queue's broker (config.queue_broker): one-statement claims, oldest first, never
shared between concurrent claimers, redelivered after the retry delay, and surviving a
connection the database killed."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import SignedPackage
from django_q.tasks import async_task

from config.queue_broker import OrmBroker
from config.tasks import enqueue_with_transaction

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "tests.foundation.test_queue_broker.never_run"


def queue(count: int) -> list[int]:
    for n in range(count):
        async_task(TASK, n)
    return list(OrmQ.objects.order_by("id").values_list("id", flat=True))


def arguments(claimed: list[tuple[int, str]]) -> list[int]:
    return [SignedPackage.loads(payload)["args"][0] for _, payload in claimed]


def test_the_configured_broker_claims_the_oldest_bulk_once_then_redelivers_after_the_delay():
    broker = get_broker()
    assert isinstance(broker, OrmBroker)
    ids = queue(Conf.BULK + 5)

    first = broker.dequeue()
    second = broker.dequeue()
    assert [task_id for task_id, _ in first] == ids[:Conf.BULK]
    assert arguments(first) == list(range(Conf.BULK))
    assert [task_id for task_id, _ in second] == ids[Conf.BULK:]
    assert broker.dequeue() is None  # everything is claimed: nothing twice

    broker.acknowledge(ids[0])
    assert not OrmQ.objects.filter(pk=ids[0]).exists()
    # A worker that died holding a task: after the retry delay it is delivered again.
    OrmQ.objects.filter(pk=ids[1]).update(lock="2000-01-01T00:00:00Z")
    assert [task_id for task_id, _ in broker.dequeue()] == [ids[1]]


def test_concurrent_claimers_never_share_a_task():
    ids = queue(300)
    claimed: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def claimer() -> None:
        broker = OrmBroker(list_key=Conf.CLUSTER_NAME)
        start.wait()
        try:
            while (tasks := broker.dequeue()) is not None:
                with lock:
                    claimed.extend(task_id for task_id, _ in tasks)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == ids  # every task exactly once


def test_claim_and_acknowledge_survive_a_connection_the_database_killed():
    ids = queue(3)
    broker = get_broker()
    assert [task_id for task_id, _ in broker.dequeue()] == ids

    def kill_our_connection() -> None:
        """As an administrator or a restart does; returns once the backend has exited, so
        its goodbye is on our socket (the health check of a quiet connection, which sends
        nothing, can only see it from then on: config/db_backend)."""
        pid = connection.connection.info.backend_pid
        other = connections.create_connection("default")
        try:
            with other.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
                assert cursor.fetchone() == (True,)
        finally:
            other.close()

    kill_our_connection()
    broker.acknowledge(ids[0])  # on a dead connection: once more on a new one
    kill_our_connection()
    async_task(TASK, 99)  # the stock enqueue's own health check reconnects
    kill_our_connection()
    assert arguments(broker.dequeue()) == [99]  # the claim, once more on a new one
    assert not OrmQ.objects.filter(pk=ids[0]).exists()
    assert OrmQ.objects.count() == 3


def test_a_task_queued_by_rolled_back_work_never_exists():
    with pytest.raises(RuntimeError), transaction.atomic():
        enqueue_with_transaction(TASK, 1)
        assert OrmQ.objects.count() == 1  # inside the transaction, with its work
        raise RuntimeError("the work failed")
    assert OrmQ.objects.count() == 0
    with transaction.atomic():
        enqueue_with_transaction(TASK, 2)
    assert [SignedPackage.loads(q.payload)["args"] for q in OrmQ.objects.all()] == [(2,)]


def test_tasks_queued_from_one_process_share_one_broker(monkeypatch):
    import os

    import django_q.brokers

    import config.tasks

    made = []

    def counting_get_broker(list_key=None):
        made.append(os.getpid())
        return get_broker(list_key)

    monkeypatch.setattr(django_q.brokers, "get_broker", counting_get_broker)
    monkeypatch.setattr(config.tasks, "_broker", None)
    with transaction.atomic():
        for n in range(3):
            enqueue_with_transaction(TASK, n)
    assert made == [os.getpid()]  # django-q2 alone would have built one per task
    assert arguments(list(OrmQ.objects.order_by("id").values_list("id", "payload"))) == [0, 1, 2]

    monkeypatch.setattr(config.tasks, "_broker", (-1, config.tasks._broker[1]))  # as if forked
    enqueue_with_transaction(TASK, 3)
    assert made == [os.getpid()] * 2
