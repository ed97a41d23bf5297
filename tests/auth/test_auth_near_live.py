"""Live mode NEAR sign-in: a NEP-413 signature proves control of a key; the account is only
proven once the NEAR RPC says the key is one of its FullAccess keys. The RPC here is the fake
JSON-RPC node on a real socket (tests/fakes/near_rpc.py), speaking nearcore's shapes."""

from __future__ import annotations

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from risk.models import AuditEvent
from tests.fakes.near_rpc import FakeNearRpc
from users.models import Wallet, WalletChallenge

NAMED = "alice-wallet.testnet"


@pytest.fixture
def near_rpc():
    fake = FakeNearRpc().start()
    fake.fault_delay = 0.2
    with override_settings(CHAIN_MODE="live", IS_LIVE=True, NEAR_RPC_URL=fake.url,
                           CHAIN_HTTP_TIMEOUT_SECONDS=1.0):
        yield fake
    fake.stop()


@pytest.fixture
def client() -> APIClient:
    return APIClient()


def access_key_queries(fake: FakeNearRpc) -> list[dict]:
    calls = [r.json() for r in fake.requests]
    return [c["params"] for c in calls
            if c["method"] == "query" and c["params"]["request_type"] == "view_access_key"]


@pytest.mark.django_db
def test_named_account_signs_in_with_a_full_access_key(auth_api, client, near_rpc):
    w = auth_api.new_wallet("near", near_account=NAMED)
    near_rpc.add_access_key(NAMED, w.public_key, full_access=True)

    body = auth_api.sign_in(client, w)

    assert Wallet.objects.get(chain="near", address=NAMED).public_key == w.public_key
    assert str(Wallet.objects.get(address=NAMED).user_id) == body["user_id"]
    assert access_key_queries(near_rpc) == [{"request_type": "view_access_key", "finality": "final",
                                             "account_id": NAMED, "public_key": w.public_key}]


@pytest.mark.django_db
def test_a_function_call_key_does_not_prove_the_account(auth_api, client, near_rpc):
    # A FunctionCall key is what dapps are handed; it must not sign in as the account.
    w = auth_api.new_wallet("near", near_account=NAMED)
    near_rpc.add_access_key(NAMED, w.public_key, full_access=False)
    challenge = auth_api.challenge(client, w)

    response = auth_api.verify(client, challenge, w.proof(challenge))

    assert response.status_code == 401
    assert response.json()["error_code"] == "INVALID_SIGNATURE"
    assert "full-access" in response.json()["details"]["reason"]
    assert not Wallet.objects.exists()


@pytest.mark.django_db
def test_a_key_of_another_account_does_not_prove_the_account(auth_api, client, near_rpc):
    owner = auth_api.new_wallet("near", near_account=NAMED)
    near_rpc.add_access_key(NAMED, owner.public_key)
    impostor = auth_api.new_wallet("near", near_account=NAMED)  # signs validly with its own key
    near_rpc.add_access_key("impostor.testnet", impostor.public_key)
    challenge = auth_api.challenge(client, impostor)

    response = auth_api.verify(client, challenge, impostor.proof(challenge))

    assert response.status_code == 401
    assert response.json()["error_code"] == "INVALID_SIGNATURE"
    assert not Wallet.objects.exists()


@pytest.mark.django_db
def test_an_account_that_does_not_exist_is_refused(auth_api, client, near_rpc):
    w = auth_api.new_wallet("near", near_account="nobody.testnet")
    challenge = auth_api.challenge(client, w)
    response = auth_api.verify(client, challenge, w.proof(challenge))
    assert response.status_code == 401
    assert response.json()["error_code"] == "INVALID_SIGNATURE"


@pytest.mark.django_db
def test_implicit_account_is_checked_on_chain_too(auth_api, client, near_rpc):
    w = auth_api.new_wallet("near")
    near_rpc.add_access_key(w.address, w.public_key)
    auth_api.sign_in(client, w)
    assert access_key_queries(near_rpc)[0]["account_id"] == w.address


@pytest.mark.django_db(transaction=True)
def test_rpc_outage_is_503_and_leaves_the_challenge_usable(auth_api, client, near_rpc):
    w = auth_api.new_wallet("near", near_account=NAMED)
    near_rpc.add_access_key(NAMED, w.public_key)
    challenge = auth_api.challenge(client, w)
    proof = w.proof(challenge)
    near_rpc.set_fault("503", times=1)

    outage = auth_api.verify(client, challenge, proof)

    assert outage.status_code == 503
    assert outage.json()["error_code"] == "CHAIN_UNAVAILABLE"
    assert WalletChallenge.objects.get(pk=challenge["challenge_id"]).used_at is None
    assert AuditEvent.objects.filter(event_type="wallet_sign_in_refused",
                                     details__error_code="CHAIN_UNAVAILABLE").count() == 1
    # Not the client's fault: the same signed challenge works once the node answers.
    assert auth_api.verify(client, challenge, proof).status_code == 200


@pytest.mark.django_db
def test_rpc_timeout_is_503(auth_api, client, near_rpc):
    w = auth_api.new_wallet("near", near_account=NAMED)
    near_rpc.add_access_key(NAMED, w.public_key)
    challenge = auth_api.challenge(client, w)
    near_rpc.fault_delay = 1.5  # beyond CHAIN_HTTP_TIMEOUT_SECONDS=1
    near_rpc.set_fault("timeout", times=1)

    response = auth_api.verify(client, challenge, w.proof(challenge))

    assert response.status_code == 503
    assert response.json()["error_code"] == "CHAIN_UNAVAILABLE"
    assert not Wallet.objects.exists()
