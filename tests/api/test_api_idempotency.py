"""Idempotency-Key on creating POSTs: replay, reuse with another body, in-use, per-user scope,
4xx stored and 5xx released, retention purge, and a real concurrent race."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from api_testviews import CALLS, GATE
from django.db import connection
from django.utils import timezone

from config.idempotency import idempotency_keys_purge, request_fingerprint
from config.schedules import SCHEDULES
from risk.models import Alert
from tests.conftest import client_for
from users.models import IdempotencyKey

pytestmark = [pytest.mark.urls("api_testviews")]

ITEMS = "/test/items"


@pytest.fixture(autouse=True)
def _reset_view_state():
    CALLS.update(count=0, fail_next_with=None)
    GATE.update(block=False, entered=threading.Event(), release=threading.Event())
    yield
    GATE["release"].set()


def _post(client, body, key="key-1", **extra):
    return client.post(ITEMS, body, format="json", HTTP_IDEMPOTENCY_KEY=key, **extra)


@pytest.mark.django_db
def test_same_key_same_body_replays_the_first_response(api_client):
    first = _post(api_client, {"chain": "stellar", "amount": 7})
    second = _post(api_client, {"amount": 7, "chain": "stellar"})  # same body, keys reordered
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert CALLS["count"] == 1
    assert Alert.objects.filter(kind="test.item").count() == 1
    row = IdempotencyKey.objects.get()
    assert (row.state, row.response_status, row.endpoint) == ("completed", 201, "test.items")


@pytest.mark.django_db
def test_same_key_different_body_is_422(api_client):
    _post(api_client, {"chain": "stellar", "amount": 7})
    response = _post(api_client, {"chain": "stellar", "amount": 8})
    assert response.status_code == 422
    assert response.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"
    assert CALLS["count"] == 1
    assert Alert.objects.filter(kind="test.item").count() == 1


@pytest.mark.django_db
def test_keys_are_scoped_per_user(api_client, other_user):
    other = client_for(other_user)
    a = _post(api_client, {"chain": "stellar", "amount": 7})
    b = _post(other, {"chain": "near", "amount": 9})
    assert a.status_code == b.status_code == 201
    assert "Idempotent-Replayed" not in b
    assert Alert.objects.filter(kind="test.item").count() == 2


@pytest.mark.django_db
def test_no_key_runs_every_time(api_client):
    for _ in range(2):
        assert api_client.post(ITEMS, {"chain": "stellar", "amount": 7}, format="json").status_code == 201
    assert Alert.objects.filter(kind="test.item").count() == 2
    assert not IdempotencyKey.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["", "x" * 256, "clé-unicode", "tab\tkey", "new\nline"])
def test_invalid_key_is_400_and_claims_nothing(api_client, key):
    response = _post(api_client, {"chain": "stellar", "amount": 7}, key=key)
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_REQUEST"
    assert not IdempotencyKey.objects.exists()
    assert CALLS["count"] == 0


@pytest.mark.django_db
def test_longest_valid_key_is_accepted(api_client):
    assert _post(api_client, {"chain": "stellar", "amount": 7}, key="~" * 255).status_code == 201


@pytest.mark.django_db
def test_4xx_is_stored_and_replayed(api_client):
    first = _post(api_client, {"chain": "solana", "amount": 7})
    second = _post(api_client, {"chain": "solana", "amount": 7})
    assert first.status_code == second.status_code == 400
    assert second.json() == first.json()
    assert second["Idempotent-Replayed"] == "true"
    assert CALLS["count"] == 1


@pytest.mark.django_db
def test_5xx_releases_the_key_so_a_retry_runs(api_client):
    CALLS["fail_next_with"] = RuntimeError("transient")
    failed = _post(api_client, {"chain": "stellar", "amount": 7})
    assert failed.status_code == 500
    assert failed.json()["error_code"] == "INTERNAL_ERROR"
    assert not IdempotencyKey.objects.exists()
    retried = _post(api_client, {"chain": "stellar", "amount": 7})
    assert retried.status_code == 201
    assert "Idempotent-Replayed" not in retried
    assert CALLS["count"] == 2


@pytest.mark.django_db
def test_in_progress_key_is_409(api_client, user):
    fingerprint = request_fingerprint(method="POST", path=ITEMS, body={"chain": "stellar", "amount": 7})
    IdempotencyKey.objects.create(user=user, key="key-1", endpoint="test.items",
                                  request_fingerprint=fingerprint)
    response = _post(api_client, {"chain": "stellar", "amount": 7})
    assert response.status_code == 409
    assert response.json()["error_code"] == "IDEMPOTENCY_KEY_IN_USE"
    assert CALLS["count"] == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicate_gets_409_while_the_first_runs(user):
    """Two real threads, two DB connections: the second sees the first's committed claim."""
    first_client, second_client = client_for(user), client_for(user)
    GATE["block"] = True
    results: dict[str, object] = {}

    def first_request():
        try:
            results["first"] = _post(first_client, {"chain": "stellar", "amount": 7})
        finally:
            connection.close()

    thread = threading.Thread(target=first_request)
    thread.start()
    try:
        assert GATE["entered"].wait(10), "first request never reached the handler"
        GATE["block"] = False
        in_use = _post(second_client, {"chain": "stellar", "amount": 7})
        reused = _post(second_client, {"chain": "near", "amount": 7})
    finally:
        GATE["release"].set()
        thread.join(15)
    assert in_use.status_code == 409 and in_use.json()["error_code"] == "IDEMPOTENCY_KEY_IN_USE"
    assert reused.status_code == 422
    first = results["first"]
    assert first.status_code == 201  # type: ignore[attr-defined]
    replay = _post(second_client, {"chain": "stellar", "amount": 7})
    assert replay.status_code == 201 and replay["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()  # type: ignore[attr-defined]
    assert CALLS["count"] == 1
    assert Alert.objects.filter(kind="test.item").count() == 1


@pytest.mark.django_db(transaction=True)
def test_many_concurrent_duplicates_run_the_handler_once(user):
    clients = [client_for(user) for _ in range(8)]
    barrier = threading.Barrier(len(clients))
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(client):
        try:
            barrier.wait(10)
            response = _post(client, {"chain": "near", "amount": 3}, key="storm")
            with lock:
                statuses.append(response.status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(statuses) == len(clients)
    assert set(statuses) <= {201, 409}
    assert Alert.objects.filter(kind="test.item").count() == 1
    assert CALLS["count"] == 1


@pytest.mark.django_db
def test_purge_keeps_keys_for_at_least_24_hours(user):
    fresh = IdempotencyKey.objects.create(user=user, key="fresh", endpoint="e", request_fingerprint="f")
    day_old = IdempotencyKey.objects.create(user=user, key="day", endpoint="e", request_fingerprint="f")
    stale = IdempotencyKey.objects.create(user=user, key="stale", endpoint="e", request_fingerprint="f")
    IdempotencyKey.objects.filter(pk=day_old.pk).update(
        created_at=timezone.now() - timedelta(hours=23, minutes=59))
    IdempotencyKey.objects.filter(pk=stale.pk).update(created_at=timezone.now() - timedelta(hours=25))
    assert idempotency_keys_purge() == 1
    assert set(IdempotencyKey.objects.values_list("key", flat=True)) == {fresh.key, day_old.key}


def test_purge_is_scheduled():
    assert any(func == "config.idempotency.idempotency_keys_purge" for _, func, _ in SCHEDULES)
