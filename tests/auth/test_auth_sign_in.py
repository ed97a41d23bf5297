"""Wallet challenge-response sign-in, per chain, with real keys made in the test:
Solana (solders Keypair), Stellar (stellar-sdk Keypair, SEP-53), NEAR (ed25519, NEP-413)."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from risk.models import AuditEvent
from users.models import ApiToken, User, Wallet, WalletChallenge

# NEAR here is an implicit account (hex of the key): the only kind a signature alone proves.
# Named NEAR accounts need the RPC's key check (live mode): test_auth_near_live.py.
CHAINS = ["solana", "stellar", "near"]


def holder(auth_api, chain: str):
    return auth_api.new_wallet(chain)


def refused(response, code: str, status: int = 401) -> None:
    assert response.status_code == status, response.content
    assert response.json()["error_code"] == code


@pytest.fixture
def client() -> APIClient:
    return APIClient()


@pytest.mark.django_db
@pytest.mark.parametrize("chain", CHAINS)
def test_valid_signature_signs_in_and_creates_the_user(auth_api, client, chain):
    w = holder(auth_api, chain)
    challenge = auth_api.challenge(client, w)

    response = auth_api.verify(client, challenge, w.proof(challenge))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["user_created"] is True
    assert [(x["chain"], x["address"]) for x in body["wallets"]] == [(w.chain, w.address)]
    user = User.objects.get(pk=body["user_id"])
    assert not user.has_usable_password() and not user.is_staff
    assert 100_001 <= user.deposit_memo < 10**15  # from user_deposit_memo_seq
    assert Wallet.objects.get(chain=w.chain, address=w.address).user == user
    assert WalletChallenge.objects.get(pk=challenge["challenge_id"]).used_at is not None
    # The token works, and /me shows the verified wallet.
    me = auth_api.bearer(body["token"]).get("/api/v1/me")
    assert me.status_code == 200
    assert me.json()["user_id"] == str(user.pk)
    assert me.json()["deposit_memo"] == str(user.deposit_memo)
    assert me.json()["wallets"][0]["address"] == w.address
    assert me.json()["wallets"][0]["public_key"] == w.public_key
    # Only the token's hash is stored.
    assert not ApiToken.objects.filter(key_hash=body["token"]).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("chain", CHAINS)
def test_signing_in_again_returns_the_same_user(auth_api, client, chain):
    w = holder(auth_api, chain)
    first = auth_api.sign_in(client, w)
    second = auth_api.sign_in(client, w)
    assert second["user_id"] == first["user_id"]
    assert second["user_created"] is False
    assert second["token"] != first["token"]
    assert User.objects.filter(wallets__address=w.address).count() == 1


@pytest.mark.django_db
def test_solana_signature_may_be_base64(auth_api, client):
    # Wallet adapters hand the 64 signature bytes over as base58 or base64; both count.
    import base58

    w = auth_api.new_wallet("solana")
    challenge = auth_api.challenge(client, w)
    raw = base58.b58decode(w.proof(challenge)["signature"])
    response = auth_api.verify(client, challenge, {"signature": base64.b64encode(raw).decode()})
    assert response.status_code == 200, response.content


@pytest.mark.django_db
def test_new_users_get_distinct_deposit_memos(auth_api, client):
    memos = {User.objects.get(pk=auth_api.sign_in(client, auth_api.new_wallet("stellar"))["user_id"])
             .deposit_memo for _ in range(3)}
    assert len(memos) == 3


@pytest.mark.django_db
def test_challenge_message_is_human_readable_and_expires_in_five_minutes(auth_api, client):
    w = auth_api.new_wallet("stellar")
    challenge = auth_api.challenge(client, w)
    row = WalletChallenge.objects.get(pk=challenge["challenge_id"])

    assert row.expires_at - row.created_at == pytest.approx(dt.timedelta(minutes=5),
                                                            abs=dt.timedelta(seconds=1))
    for part in ("solpay wants you to sign in", w.address, f"Nonce: {row.nonce}",
                 "Issued At: ", "Expiration Time: ", challenge["challenge_id"]):
        assert part in challenge["message"]
    assert "nonce" not in challenge  # the NEP-413 fields are NEAR-only


@pytest.mark.django_db
def test_near_challenge_carries_a_32_byte_nonce_and_the_recipient(auth_api, client):
    challenge = auth_api.challenge(client, auth_api.new_wallet("near"))
    assert len(base64.b64decode(challenge["nonce"], validate=True)) == 32
    assert challenge["recipient"] == "solpay"
    other = auth_api.challenge(client, auth_api.new_wallet("near"))
    assert other["nonce"] != challenge["nonce"]


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("chain", CHAINS)
def test_signature_by_another_key_is_refused(auth_api, client, chain):
    w = holder(auth_api, chain)
    impostor = holder(auth_api, chain)
    challenge = auth_api.challenge(client, w)

    response = auth_api.verify(client, challenge, impostor.proof(challenge))

    refused(response, "INVALID_SIGNATURE")
    assert not Wallet.objects.filter(address=w.address).exists()
    assert not User.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("chain", CHAINS)
def test_signature_over_another_message_is_refused(auth_api, client, chain):
    w = holder(auth_api, chain)
    challenge = auth_api.challenge(client, w)
    tampered = challenge["message"].replace("Nonce: ", "Nonce: 0")

    refused(auth_api.verify(client, challenge, w.proof(challenge, message=tampered)),
            "INVALID_SIGNATURE")
    assert not Wallet.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["nonce", "recipient"])
def test_near_signature_over_another_nonce_or_recipient_is_refused(auth_api, client, field):
    w = auth_api.new_wallet("near")
    challenge = auth_api.challenge(client, w)
    override = {"nonce": b"\x07" * 32} if field == "nonce" else {"recipient": "evil.example"}
    refused(auth_api.verify(client, challenge, w.proof(challenge, **override)), "INVALID_SIGNATURE")


@pytest.mark.django_db
@pytest.mark.parametrize("chain", CHAINS)
def test_signature_after_expiry_is_refused(auth_api, client, chain):
    w = holder(auth_api, chain)
    challenge = auth_api.challenge(client, w)
    proof = w.proof(challenge)  # signed in time, sent too late
    past = timezone.now() - dt.timedelta(minutes=6)
    WalletChallenge.objects.filter(pk=challenge["challenge_id"]).update(
        created_at=past - dt.timedelta(minutes=5), expires_at=past + dt.timedelta(seconds=59))

    refused(auth_api.verify(client, challenge, proof), "CHALLENGE_EXPIRED")
    assert not Wallet.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("chain", CHAINS)
def test_replayed_signature_is_refused(auth_api, client, chain):
    w = holder(auth_api, chain)
    challenge = auth_api.challenge(client, w)
    proof = w.proof(challenge)
    assert auth_api.verify(client, challenge, proof).status_code == 200

    replay = auth_api.verify(APIClient(), challenge, proof)

    refused(replay, "CHALLENGE_USED")
    assert ApiToken.objects.count() == 1


@pytest.mark.django_db
def test_a_refused_attempt_spends_the_challenge(auth_api, client):
    # One guess per challenge: a wrong signature burns it, so the right one cannot follow.
    w = auth_api.new_wallet("solana")
    challenge = auth_api.challenge(client, w)
    refused(auth_api.verify(client, challenge, auth_api.new_wallet("solana").proof(challenge)),
            "INVALID_SIGNATURE")
    refused(auth_api.verify(client, challenge, w.proof(challenge)), "CHALLENGE_USED")


@pytest.mark.django_db
@pytest.mark.parametrize("chain", CHAINS)
def test_address_or_chain_mismatch_with_the_challenge_is_refused(auth_api, client, chain):
    w = holder(auth_api, chain)
    challenge = auth_api.challenge(client, w)
    other = holder(auth_api, chain)
    refused(auth_api.verify(client, challenge, w.proof(challenge), address=other.address),
            "CHALLENGE_INVALID")

    challenge = auth_api.challenge(client, w)
    wrong_chain = "stellar" if w.chain != "stellar" else "solana"
    refused(auth_api.verify(client, challenge, w.proof(challenge), chain=wrong_chain),
            "CHALLENGE_INVALID")
    assert not Wallet.objects.exists()


@pytest.mark.django_db
def test_near_implicit_account_refuses_a_key_that_is_not_its_own(auth_api, client):
    # The implicit account id IS the public key: another key's valid NEP-413 signature
    # must not sign in as it.
    w = auth_api.new_wallet("near")
    impostor = auth_api.new_wallet("near")
    challenge = auth_api.challenge(client, w)
    proof = impostor.proof(challenge)  # valid signature by impostor's key, impostor's pubkey
    refused(auth_api.verify(client, challenge, proof), "INVALID_SIGNATURE")


@pytest.mark.django_db
def test_near_proof_without_public_key_is_refused(auth_api, client):
    w = auth_api.new_wallet("near")
    challenge = auth_api.challenge(client, w)
    proof = w.proof(challenge)
    del proof["public_key"]
    refused(auth_api.verify(client, challenge, proof), "INVALID_SIGNATURE")


@pytest.mark.django_db
def test_a_stellar_signature_does_not_pass_for_a_solana_challenge_of_the_same_key(auth_api, client):
    # Same ed25519 key on both chains: SEP-53 signs a prefixed hash, not the message bytes,
    # so a proof made for one chain is not a proof for the other.
    stellar = auth_api.new_wallet("stellar")
    from solders.keypair import Keypair

    solana_address = str(Keypair.from_seed(stellar.key.raw_secret_key()).pubkey())
    challenge = client.post("/api/v1/auth/challenge",
                            {"chain": "solana", "address": solana_address}, format="json").json()
    refused(auth_api.verify(client, challenge, stellar.proof(challenge)), "INVALID_SIGNATURE")


@pytest.mark.django_db
def test_unknown_challenge_is_refused(auth_api, client):
    w = auth_api.new_wallet("solana")
    fake = {"challenge_id": "00000000-0000-4000-8000-000000000000", "message": "solpay"}
    refused(auth_api.verify(client, fake, w.proof(fake)), "CHALLENGE_INVALID")


@pytest.mark.django_db
@pytest.mark.parametrize("chain,address", [
    ("solana", "not-base58-0OIl"),
    ("solana", "1111111111111111111111111111111"),  # 31 bytes, not a 32-byte key
    ("stellar", "GBRPYHIL2CI3FNQ4BXLFMNDLFJUNPU2HY3ZMFSHONUCEOASW7QC7OX2I"),  # bad checksum
    ("stellar", "SBRPYHIL2CI3FNQ4BXLFMNDLFJUNPU2HY3ZMFSHONUCEOASW7QC7OX2H"),  # not a G... id
    ("near", "Alice.near"),  # uppercase
    ("near", "a"),  # too short
    ("near", "0x" + "ab" * 20),  # eth-implicit: no ed25519 proof possible
    ("near", "alice..near"),
])
def test_invalid_addresses_are_refused(client, chain, address):
    response = client.post("/api/v1/auth/challenge", {"chain": chain, "address": address},
                           format="json")
    refused(response, "INVALID_ADDRESS", 400)
    assert not WalletChallenge.objects.exists()


@pytest.mark.django_db
def test_named_near_accounts_are_refused_in_sandbox_mode(auth_api, client):
    # No NEAR state in sandbox: nothing could show the key is the named account's, and any
    # key holder could otherwise claim "alice.testnet".
    response = client.post("/api/v1/auth/challenge", {"chain": "near", "address": "alice.testnet"},
                           format="json")
    refused(response, "INVALID_ADDRESS", 400)
    assert "live" in response.json()["error"]


@pytest.mark.django_db
def test_unknown_chain_is_a_bad_request(client):
    response = client.post("/api/v1/auth/challenge", {"chain": "ethereum", "address": "0xabc"},
                           format="json")
    refused(response, "INVALID_REQUEST", 400)


@pytest.mark.django_db
def test_malformed_signature_is_refused_without_an_error_page(auth_api, client):
    w = auth_api.new_wallet("stellar")
    challenge = auth_api.challenge(client, w)
    refused(auth_api.verify(client, challenge, {"signature": "%%%not base64%%%"}), "INVALID_SIGNATURE")


# --- audit, tokens, attaching ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_refused_attempts_are_audited_and_committed(auth_api, client):
    w = auth_api.new_wallet("solana")
    challenge = auth_api.challenge(client, w)
    refused(auth_api.verify(client, challenge, auth_api.new_wallet("solana").proof(challenge)),
            "INVALID_SIGNATURE")
    refused(auth_api.verify(client, challenge, w.proof(challenge)), "CHALLENGE_USED")

    # transaction=True: no test transaction around us, so these rows are committed.
    events = AuditEvent.objects.filter(event_type="wallet_sign_in_refused",
                                       entity_id=challenge["challenge_id"]).order_by("created_at")
    assert [e.details["error_code"] for e in events] == ["INVALID_SIGNATURE", "CHALLENGE_USED"]
    assert events[0].actor == f"solana:{w.address}"
    assert events[0].details["client_ip"] == "127.0.0.1"


@pytest.mark.django_db
def test_successful_sign_in_is_audited(auth_api, client):
    body = auth_api.sign_in(client, auth_api.new_wallet("near"))
    assert AuditEvent.objects.filter(event_type="wallet_signed_in", user_id=body["user_id"]).exists()
    assert AuditEvent.objects.filter(event_type="user_created", user_id=body["user_id"]).exists()


@pytest.mark.django_db
def test_logout_revokes_only_the_token_used(auth_api, client):
    w = auth_api.new_wallet("solana")
    first = auth_api.sign_in(client, w)["token"]
    second = auth_api.sign_in(client, w)["token"]

    response = auth_api.bearer(first).post("/api/v1/auth/logout")

    assert response.status_code == 204
    refused(auth_api.bearer(first).get("/api/v1/me"), "UNAUTHORIZED")
    assert auth_api.bearer(second).get("/api/v1/me").status_code == 200
    assert ApiToken.objects.filter(revoked_at__isnull=False).count() == 1


@pytest.mark.django_db
def test_logout_and_me_need_a_token(client):
    refused(client.post("/api/v1/auth/logout"), "UNAUTHORIZED")
    refused(client.get("/api/v1/me"), "UNAUTHORIZED")


@pytest.mark.django_db
def test_verify_with_a_token_attaches_the_wallet_to_that_user(auth_api, client):
    solana = auth_api.new_wallet("solana")
    near = auth_api.new_wallet("near")
    signed_in = auth_api.sign_in(client, solana)
    api = auth_api.bearer(signed_in["token"])

    challenge = auth_api.challenge(api, near)
    response = auth_api.verify(api, challenge, near.proof(challenge))

    assert response.status_code == 200, response.content
    assert response.json()["user_id"] == signed_in["user_id"]
    assert response.json()["user_created"] is False
    wallets = api.get("/api/v1/me").json()["wallets"]
    assert {(x["chain"], x["address"]) for x in wallets} == {("solana", solana.address),
                                                             ("near", near.address)}
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_attaching_gives_a_user_without_one_a_deposit_memo(auth_api, user, api_client):
    assert user.deposit_memo is None
    w = auth_api.new_wallet("stellar")
    challenge = auth_api.challenge(api_client, w)
    assert auth_api.verify(api_client, challenge, w.proof(challenge)).status_code == 200
    user.refresh_from_db()
    assert user.deposit_memo is not None


@pytest.mark.django_db
def test_a_wallet_verified_by_one_user_cannot_be_claimed_by_another(auth_api, client, api_client,
                                                                    user):
    w = auth_api.new_wallet("stellar")
    owner = auth_api.sign_in(client, w)["user_id"]

    challenge = auth_api.challenge(api_client, w)
    response = auth_api.verify(api_client, challenge, w.proof(challenge))

    refused(response, "WALLET_ALREADY_CLAIMED", 409)
    assert str(Wallet.objects.get(address=w.address).user_id) == owner
    assert not user.wallets.exists()


@pytest.mark.django_db
def test_an_invalid_token_on_verify_is_refused_not_ignored(auth_api, client):
    # A stale token must not silently fall back to creating a fresh user.
    w = auth_api.new_wallet("solana")
    challenge = auth_api.challenge(client, w)
    response = auth_api.verify(auth_api.bearer("not-a-token"), challenge, w.proof(challenge))
    refused(response, "UNAUTHORIZED")
    assert not User.objects.exists()


# --- brute force ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_auth_endpoints_are_throttled(auth_api, client, monkeypatch):
    from rest_framework.throttling import SimpleRateThrottle

    monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, "auth", "3/min")
    w = auth_api.new_wallet("solana")
    challenge = auth_api.challenge(client, w)
    impostor = auth_api.new_wallet("solana")
    statuses = [auth_api.verify(client, challenge, impostor.proof(challenge)).status_code
                for _ in range(2)]
    assert statuses == [401, 401]

    response = auth_api.verify(client, challenge, w.proof(challenge))

    refused(response, "RATE_LIMITED", 429)
    assert int(response["Retry-After"]) > 0
    # Another client IP is counted separately.
    assert auth_api.challenge(APIClient(REMOTE_ADDR="10.0.0.7"), w)["challenge_id"]


# --- operators ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_operators_sign_in_to_admin_with_a_password_and_wallet_users_cannot(auth_api, client):
    from django.test import Client

    from users.services import operator_ensure

    operator_ensure(username="ops", password="a-long-operator-password")
    admin = Client()
    assert admin.login(username="ops", password="a-long-operator-password")
    assert admin.get("/admin/").status_code == 200

    wallet_user = User.objects.get(pk=auth_api.sign_in(client, auth_api.new_wallet("solana"))["user_id"])
    outsider = Client()
    assert not outsider.login(username=wallet_user.username, password="")
    # A bearer token is API-only: it does not open the admin.
    token = auth_api.sign_in(client, auth_api.new_wallet("stellar"))["token"]
    response = outsider.get("/admin/", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.django_db
def test_expired_challenges_are_purged_after_a_day(auth_api, client):
    from users.services import challenges_purge

    old = auth_api.challenge(client, auth_api.new_wallet("solana"))
    fresh = auth_api.challenge(client, auth_api.new_wallet("solana"))
    long_ago = timezone.now() - dt.timedelta(days=2)
    WalletChallenge.objects.filter(pk=old["challenge_id"]).update(
        created_at=long_ago, expires_at=long_ago + dt.timedelta(minutes=5))

    assert challenges_purge() == 1
    assert list(WalletChallenge.objects.values_list("pk", flat=True)) == [
        WalletChallenge.objects.get(pk=fresh["challenge_id"]).pk]
