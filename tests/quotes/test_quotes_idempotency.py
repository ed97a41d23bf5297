"""`Idempotency-Key` on POST /api/v1/quotes: replay, reuse with another body, in-flight."""

from __future__ import annotations

import threading

import pytest

from quotes.models import Quote
from tests.conftest import client_for
from tests.factories import UserFactory, WalletFactory

pytestmark = pytest.mark.django_db


def body_for(work, lamports: int = 10**7) -> dict:
    return {"source_chain": "stellar", "instructions": work.as_json(work.sol_transfer(lamports))}


def test_same_key_same_body_replays_the_first_response(quote_settings, client, work):
    body = body_for(work)
    first = client.post("/api/v1/quotes", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    second = client.post("/api/v1/quotes", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert Quote.objects.count() == 1


def test_same_key_other_body_is_422(quote_settings, client, work):
    client.post("/api/v1/quotes", body_for(work), format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    response = client.post("/api/v1/quotes", body_for(work, 2 * 10**7), format="json",
                           HTTP_IDEMPOTENCY_KEY="k-2")
    assert response.status_code == 422
    assert response.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"
    assert Quote.objects.count() == 1


def test_keys_are_scoped_per_user(quote_settings, client, work):
    from stellar_sdk import Keypair

    other = UserFactory()
    WalletFactory(user=other, chain="stellar", address=Keypair.random().public_key)
    body = body_for(work)
    mine = client.post("/api/v1/quotes", body, format="json", HTTP_IDEMPOTENCY_KEY="shared")
    theirs = client_for(other).post("/api/v1/quotes", body, format="json",
                                    HTTP_IDEMPOTENCY_KEY="shared")
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["quote_id"] != theirs.json()["quote_id"]


def test_seed_route_honours_the_key_too(quote_settings, client, work):
    body = {"source_chain": "stellar", "solana_instructions_base64": work.legacy_b64(work.memo())}
    first = client.post("/quote", body, format="json", HTTP_IDEMPOTENCY_KEY="seed-1")
    again = client.post("/quote", body, format="json", HTTP_IDEMPOTENCY_KEY="seed-1")
    assert first.status_code == again.status_code == 200
    assert again.json()["quote_id"] == first.json()["quote_id"]


@pytest.mark.django_db(transaction=True)
def test_same_key_while_the_first_request_runs_is_409(quote_settings, stellar_user, work, chain):
    client_a, client_b = client_for(stellar_user), client_for(stellar_user)
    body = body_for(work)
    # The first request's two chain reads each take 1.5 s, so it is still running when
    # the second arrives.
    chain.admin.inject_faults(slow_requests=2, slow_ms=1500)
    results: dict[str, object] = {}

    def first() -> None:
        from django.db import connection

        try:
            results["first"] = client_a.post("/api/v1/quotes", body, format="json",
                                             HTTP_IDEMPOTENCY_KEY="slow-1")
        finally:
            connection.close()

    try:
        thread = threading.Thread(target=first)
        thread.start()
        # Wait until the first request has claimed the key.
        from users.models import IdempotencyKey
        for _ in range(200):
            if IdempotencyKey.objects.filter(key="slow-1").exists():
                break
            threading.Event().wait(0.01)
        second = client_b.post("/api/v1/quotes", body, format="json",
                               HTTP_IDEMPOTENCY_KEY="slow-1")
        thread.join()
    finally:
        chain.admin.clear_faults()

    assert second.status_code == 409
    assert second.json()["error_code"] == "IDEMPOTENCY_KEY_IN_USE"
    assert results["first"].status_code == 201
    assert Quote.objects.filter(user=stellar_user).count() == 1
    # Once finished, the key replays the stored response.
    replay = client_b.post("/api/v1/quotes", body, format="json", HTTP_IDEMPOTENCY_KEY="slow-1")
    assert replay.status_code == 201
    assert replay.json()["quote_id"] == results["first"].json()["quote_id"]
