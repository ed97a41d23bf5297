"""Concurrent verifications of one wallet end with exactly one owner. Real threads, each with
its own PostgreSQL session, through the HTTP API; the UNIQUE(chain, address) constraint is
what decides, so these run with committed transactions (transaction=True)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, transaction
from rest_framework.test import APIClient

from tests.factories import UserFactory
from users.authentication import token_issue
from users.models import ApiToken, User, Wallet


class Worker(threading.Thread):
    """Runs `call` in its own DB session; exposes that session's backend pid."""

    def __init__(self, call: Callable[[], Any], barrier: threading.Barrier | None = None) -> None:
        super().__init__(daemon=True)
        self.call, self.barrier = call, barrier
        self.pid: int | None = None
        self.ready = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                self.pid = cursor.fetchone()[0]
            self.ready.set()
            if self.barrier is not None:
                self.barrier.wait(timeout=10)
            self.result = self.call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            self.error = exc
        finally:
            self.ready.set()
            connection.close()

    def outcome(self) -> Any:
        self.join(timeout=30)
        assert not self.is_alive(), "worker hung"
        if self.error is not None:
            raise self.error
        return self.result


def wait_until_blocked(worker: Worker, timeout: float = 10.0) -> None:
    """Until the worker's session waits on a lock held by another session."""
    assert worker.ready.wait(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            # pg_locks is read fresh on every call (unlike pg_stat_activity's per-transaction
            # snapshot), so this can be polled inside the transaction holding the lock.
            cursor.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted",
                           [worker.pid])
            if cursor.fetchone()[0]:
                return
        assert worker.is_alive(), f"worker finished without blocking: {worker.error or worker.result}"
        time.sleep(0.02)
    raise AssertionError("worker never blocked")


def token_client(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=user)}")
    return client


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("chain", ["solana", "stellar", "near"])
def test_users_racing_to_verify_one_wallet_end_with_exactly_one_owner(auth_api, chain):
    # Given one wallet holder who signed challenges for six different accounts
    holder = auth_api.new_wallet(chain)
    racers = []
    for _ in range(6):
        client = token_client(UserFactory())
        challenge = auth_api.challenge(client, holder)
        racers.append((client, challenge, holder.proof(challenge)))

    # When all six verify at the same moment
    barrier = threading.Barrier(len(racers))
    workers = [Worker(lambda c=c, ch=ch, p=p: auth_api.verify(c, ch, p), barrier)
               for c, ch, p in racers]
    for worker in workers:
        worker.start()
    responses = [worker.outcome() for worker in workers]

    # Then exactly one owns it and the others were told it is taken
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * 5, [r.content for r in responses]
    assert {r.json()["error_code"] for r in responses if r.status_code == 409} == {
        "WALLET_ALREADY_CLAIMED"}
    winner = next(r.json()["user_id"] for r in responses if r.status_code == 200)
    assert Wallet.objects.count() == 1
    assert str(Wallet.objects.get(chain=chain, address=holder.address).user_id) == winner


@pytest.mark.django_db(transaction=True)
def test_claim_that_loses_on_the_unique_constraint_is_a_409(auth_api):
    """Both verifications pass the "already claimed?" check before either commits, so only
    the database constraint can stop the second one.

    This session holds a SHARE lock on the audit table: A inserts the wallet and then waits
    to write its audit row (uncommitted); B, seeing no committed wallet, inserts the same
    address and waits on A's unique index entry. Releasing the lock lets A commit; B's insert
    must then fail on the constraint and come back as WALLET_ALREADY_CLAIMED.
    """
    holder = auth_api.new_wallet("stellar")
    user_a, user_b = UserFactory(), UserFactory()
    client_a, client_b = token_client(user_a), token_client(user_b)
    challenge_a = auth_api.challenge(client_a, holder)
    challenge_b = auth_api.challenge(client_b, holder)

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("LOCK TABLE risk_auditevent IN SHARE MODE")
        a = Worker(lambda: auth_api.verify(client_a, challenge_a, holder.proof(challenge_a)))
        a.start()
        wait_until_blocked(a)  # wallet row inserted, waiting to audit
        b = Worker(lambda: auth_api.verify(client_b, challenge_b, holder.proof(challenge_b)))
        b.start()
        wait_until_blocked(b)  # waiting on A's uncommitted wallet row
    response_a, response_b = a.outcome(), b.outcome()

    assert response_a.status_code == 200, response_a.content
    assert response_b.status_code == 409, response_b.content
    assert response_b.json()["error_code"] == "WALLET_ALREADY_CLAIMED"
    assert Wallet.objects.get(address=holder.address).user_id == user_a.pk
    assert not Wallet.objects.filter(user=user_b).exists()


@pytest.mark.django_db(transaction=True)
def test_two_first_sign_ins_of_one_wallet_share_one_new_user(auth_api):
    """The same key holder signing in twice at once (two tabs) must not create two users:
    the constraint's loser retries and signs in as the winner's user."""
    holder = auth_api.new_wallet("solana")
    client = APIClient()
    challenges = [auth_api.challenge(client, holder) for _ in range(2)]

    with transaction.atomic(), connection.cursor() as cursor:
        # Both block after their "is it claimed?" check, at the new user's audit row.
        cursor.execute("LOCK TABLE risk_auditevent IN SHARE MODE")
        workers = [Worker(lambda ch=ch: auth_api.verify(APIClient(), ch, holder.proof(ch)))
                   for ch in challenges]
        for worker in workers:
            worker.start()
            wait_until_blocked(worker)
    responses = [worker.outcome() for worker in workers]

    assert [r.status_code for r in responses] == [200, 200], [r.content for r in responses]
    assert responses[0].json()["user_id"] == responses[1].json()["user_id"]
    assert User.objects.count() == 1
    assert Wallet.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_one_challenge_verified_twice_at_once_signs_in_once(auth_api):
    """A replay sent while the first verification is still in flight: both pass the "used?"
    pre-check, so only the conditional UPDATE (used_at IS NULL) can refuse the second."""
    holder = auth_api.new_wallet("near")
    challenge = auth_api.challenge(APIClient(), holder)
    proof = holder.proof(challenge)

    with transaction.atomic(), connection.cursor() as cursor:
        # A spends the challenge, then waits at its new user's audit row (uncommitted).
        cursor.execute("LOCK TABLE risk_auditevent IN SHARE MODE")
        a = Worker(lambda: auth_api.verify(APIClient(), challenge, proof))
        a.start()
        wait_until_blocked(a)
        # B saw the challenge unused, checked the signature, and waits on A's row lock.
        b = Worker(lambda: auth_api.verify(APIClient(), challenge, proof))
        b.start()
        wait_until_blocked(b)
    response_a, response_b = a.outcome(), b.outcome()

    assert response_a.status_code == 200, response_a.content
    assert response_b.status_code == 401, response_b.content
    assert response_b.json()["error_code"] == "CHALLENGE_USED"
    assert User.objects.count() == 1
    assert ApiToken.objects.count() == 1
