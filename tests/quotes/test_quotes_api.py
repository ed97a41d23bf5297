"""The quote API as a client sees it: response shape, signature, deposit instructions,
ownership, listing, cancel, expiry, seed routes and the query budget of the hot path."""

from __future__ import annotations

import datetime as dt
import json

import base58
import pytest
from django.utils import timezone
from nacl.signing import VerifyKey

from quotes.models import Quote, QuoteTransition
from quotes.services.quotes import quotes_expire_due
from quotes.signing import service_public_key
from risk.models import AuditEvent
from tests.conftest import client_for
from tests.factories import QuoteFactory, UserFactory

pytestmark = pytest.mark.django_db

DESIGN_FIELDS = {"quote_id", "status", "source_chain", "source_asset", "total_cost", "service_fee",
                 "gas_estimate", "treasury_outflow", "price", "expires_at", "nonce", "payment",
                 "signature"}


def create(client, work, chain_name="stellar", **extra):
    body = {"source_chain": chain_name, "instructions": work.as_json(work.sol_transfer(10**7)),
            **extra}
    response = client.post("/api/v1/quotes", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def test_response_fields_and_amounts_are_strings(quote_settings, client, work):
    body = create(client, work)

    assert set(body) == DESIGN_FIELDS
    assert set(body["price"]) == {"rate", "source", "publish_time", "confidence"}
    assert set(body["payment"]) == {"address", "memo_type", "memo", "amount", "instructions"}
    for field in ("total_cost", "service_fee", "gas_estimate", "treasury_outflow"):
        assert isinstance(body[field], str) and body[field].isdigit()
    assert body["status"] == "pending" and body["source_asset"] == "XLM"
    assert body["price"] == {"rate": "1500", "source": "fixed",
                             "publish_time": body["price"]["publish_time"],
                             "confidence": "0.000000"}
    assert int(body["total_cost"]) == (int(body["service_fee"]) + int(body["gas_estimate"])
                                       + int(Quote.objects.get(pk=body["quote_id"]).source_amount))
    # 0.01 SOL at $150 = $1.50 = 15 XLM, + 0.5% buffer = 150,750,000 stroops.
    quote = Quote.objects.get(pk=body["quote_id"])
    assert quote.source_amount == 150_750_000
    assert quote.gas_estimate == 75_375  # 5000 lamports = 0.0075 XLM + 0.5%
    assert quote.service_fee == 150_826  # ceil(0.1% of 150,825,375)
    assert quote.price_snapshot["prices_usd"]["SOL"]["price"] == "150.00"


def test_ttl_is_300_seconds_with_fixed_prices(quote_settings, client, work):
    body = create(client, work)
    quote = Quote.objects.get(pk=body["quote_id"])
    assert quote.expires_at - quote.created_at == dt.timedelta(seconds=300)


def test_signature_verifies_with_only_the_public_key(quote_settings, client, work):
    body = create(client, work)
    public_key = service_public_key()

    # What a client does with nothing but the response and the published key.
    signed = {k: v for k, v in body.items() if k not in ("signature", "status")}
    message = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    VerifyKey(base58.b58decode(public_key)).verify(message, base58.b58decode(body["signature"]))

    tampered = dict(signed, total_cost=str(int(body["total_cost"]) - 1))
    forged = json.dumps(tampered, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(Exception, match="Signature was forged or corrupt"):
        VerifyKey(base58.b58decode(public_key)).verify(forged, base58.b58decode(body["signature"]))

    # The signature still holds when the quote is read back later; the read adds the
    # (unsigned, still empty) execution block.
    again = client.get(f"/api/v1/quotes/{body['quote_id']}").json()
    assert again.pop("execution") is None
    assert again == body


def test_stellar_deposit_uses_a_unique_memo_id(quote_settings, client, work):
    first, second = create(client, work), create(client, work)
    for body in (first, second):
        payment = body["payment"]
        assert payment["address"] == quote_settings.STELLAR_TREASURY_ADDRESS
        assert payment["memo_type"] == "id"
        assert int(payment["memo"]) >= 10**15 and int(payment["memo"]) < 2**64
        assert payment["amount"] == body["total_cost"]
        assert payment["instructions"]["memo"] == {"type": "MEMO_ID", "value": payment["memo"]}
    assert first["payment"]["memo"] != second["payment"]["memo"]
    assert first["nonce"] != second["nonce"]


def test_near_deposit_is_a_function_call_with_the_deposit(quote_settings, near_user, work):
    body = create(client_for(near_user), work, chain_name="near")
    payment = body["payment"]
    assert body["source_asset"] == "NEAR"
    assert payment["address"] == quote_settings.NEAR_PAYMENT_ACCOUNT
    assert payment["instructions"]["method"] == "execute_payment"
    assert payment["instructions"]["args"] == {"quote_id": body["quote_id"]}
    assert payment["instructions"]["deposit"] == body["total_cost"] == payment["amount"]
    # 0.01 SOL at $150 / NEAR $3 = 0.5 NEAR, in yocto: 25 digits.
    quote = Quote.objects.get(pk=body["quote_id"])
    assert quote.source_amount == 5 * 10**23 + 5 * 10**23 * 5 // 1000


def test_refund_to_defaults_to_the_verified_wallet(quote_settings, client, work, stellar_user):
    body = create(client, work)
    wallet = stellar_user.wallets.get(chain="stellar")
    assert Quote.objects.get(pk=body["quote_id"]).refund_to == wallet.address


def test_refund_to_given_is_kept(quote_settings, client, work):
    from stellar_sdk import Keypair

    address = Keypair.random().public_key
    body = create(client, work, refund_to=address)
    assert Quote.objects.get(pk=body["quote_id"]).refund_to == address


def test_creation_is_audited(quote_settings, client, work, stellar_user):
    body = create(client, work)
    # Creation is not a transition: history starts at the first status change.
    assert not QuoteTransition.objects.filter(quote_id=body["quote_id"]).exists()
    assert AuditEvent.objects.filter(event_type="quote_created", entity_id=body["quote_id"],
                                     user_id=stellar_user.pk).exists()


def test_a_user_sees_only_their_own_quotes(quote_settings, client, work):
    stranger_quote = QuoteFactory(user=UserFactory())
    for method, path in (("get", f"/api/v1/quotes/{stranger_quote.pk}"),
                         ("post", f"/api/v1/quotes/{stranger_quote.pk}/cancel"),
                         ("get", f"/status/{stranger_quote.pk}"),
                         ("get", "/api/v1/quotes/not-a-uuid")):
        response = getattr(client, method)(path)
        assert response.status_code == 404
        assert response.json()["error_code"] == "QUOTE_NOT_FOUND"
    assert client.get("/api/v1/quotes").json()["count"] == 0
    Quote.objects.get(pk=stranger_quote.pk, status="pending")


def test_list_filters_by_status_and_paginates(quote_settings, client, work, stellar_user):
    for _ in range(3):
        QuoteFactory(user=stellar_user)
    QuoteFactory(user=stellar_user, status="expired")
    page = client.get("/api/v1/quotes?limit=2").json()
    assert page["count"] == 4 and len(page["results"]) == 2 and page["next"]
    expired = client.get("/api/v1/quotes?status=expired").json()
    assert [q["status"] for q in expired["results"]] == ["expired"]
    response = client.get("/api/v1/quotes?status=bogus")
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_QUOTE_PARAMETERS"


def test_cancel_only_while_pending(quote_settings, client, work):
    body = create(client, work)
    response = client.post(f"/api/v1/quotes/{body['quote_id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert list(QuoteTransition.objects.filter(quote_id=body["quote_id"])
                .values_list("to_status", flat=True)) == ["cancelled"]

    again = client.post(f"/api/v1/quotes/{body['quote_id']}/cancel")
    assert again.status_code == 409
    assert again.json()["error_code"] == "QUOTE_NOT_PENDING"


def test_committed_quote_cannot_be_cancelled(quote_settings, client, stellar_user):
    quote = QuoteFactory(user=stellar_user, status="committed")
    response = client.post(f"/api/v1/quotes/{quote.pk}/cancel")
    assert response.status_code == 409
    quote.refresh_from_db()
    assert quote.status == "committed"


def test_expiry_job_expires_only_due_pending_quotes(quote_settings, stellar_user):
    now = timezone.now()
    due = QuoteFactory(user=stellar_user, created_at=now - dt.timedelta(minutes=10),
                       expires_at=now - dt.timedelta(seconds=1))
    fresh = QuoteFactory(user=stellar_user)
    paid = QuoteFactory(user=stellar_user, status="committed",
                        created_at=now - dt.timedelta(minutes=10),
                        expires_at=now - dt.timedelta(seconds=1))

    assert quotes_expire_due() == 1
    assert quotes_expire_due() == 0  # idempotent

    due.refresh_from_db(), fresh.refresh_from_db(), paid.refresh_from_db()
    assert (due.status, fresh.status, paid.status) == ("expired", "pending", "committed")
    transition = QuoteTransition.objects.get(quote=due)
    assert (transition.from_status, transition.to_status, transition.actor) == (
        "pending", "expired", "system:expiry")
    assert AuditEvent.objects.filter(event_type="quote_expired", entity_id=str(due.pk)).exists()


def test_expiry_job_is_scheduled_every_minute():
    from config.schedules import SCHEDULES

    assert ("quote expiry", "quotes.services.quotes.quotes_expire_due", 1) in SCHEDULES


def test_seed_quote_route_answers_with_seed_field_names(quote_settings, client, work, stellar_user):
    payload = work.legacy_b64(work.sol_transfer(10**6))
    response = client.post("/quote", {"user_id": "550e8400-e29b-41d4-a716-446655440000",
                                      "source_chain": "stellar",
                                      "solana_instructions_base64": payload,
                                      "estimated_compute_units": 200000}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    for field in ("quote_id", "user_id", "source_chain", "total_cost", "service_fee",
                  "gas_estimate", "expires_at", "payment_address", "nonce"):
        assert field in body
    assert body["user_id"] == str(stellar_user.pk)  # the token's user, not the body's
    assert body["payment_memo_type"] == "id"

    status = client.get(f"/status/{body['quote_id']}").json()
    assert status == {"quote_id": body["quote_id"], "status": "pending", "solana_signature": None,
                      "executed_at": None, "error_message": None}


def test_seed_status_shows_the_execution(quote_settings, client, stellar_user):
    from execution.models import Execution

    quote = QuoteFactory(user=stellar_user, status="executed", executed_at=timezone.now())
    Execution.objects.create(quote=quote, status="confirmed", signature="5Kn8wSig",
                             confirmed_at=quote.executed_at)
    status = client.get(f"/status/{quote.pk}").json()
    assert status["status"] == "executed"
    assert status["solana_signature"] == "5Kn8wSig"
    assert status["executed_at"].startswith(quote.executed_at.strftime("%Y-%m-%dT%H:%M:%S"))


def test_quote_creation_query_budget(quote_settings, client, work, django_assert_max_num_queries):
    create(client, work)  # warm caches (throttle, feed, backend) outside the budget
    body = {"source_chain": "stellar", "instructions": work.as_json(work.sol_transfer(10**6))}
    # token, idempotency claim + completion, one read (risk state, in-flight commitments,
    # memo id, refund wallet), the quote and its audit row in one insert = 5 statements;
    # the claim's atomic block adds 2 SAVEPOINT statements inside the test transaction, and
    # a new publish second may add one price observation insert.
    with django_assert_max_num_queries(8):
        response = client.post("/api/v1/quotes", body, format="json",
                               HTTP_IDEMPOTENCY_KEY="budget-1")
    assert response.status_code == 201


def test_treasury_capacity_is_the_balance_less_paid_quotes(quote_settings, chain, stellar_user):
    from decimal import Decimal

    from quotes.selectors import treasury_quote_capacity

    quote_settings.PER_TRANSACTION_LIMIT_SOL = Decimal("1000000")
    before = treasury_quote_capacity()
    assert int(before["treasury_available_lamports"]) <= chain.balance(chain.treasury)
    QuoteFactory(user=stellar_user, status="committed", max_lamports_spend=Decimal(10**9),
                 destination_amount=Decimal(10**9))
    after = treasury_quote_capacity()  # the balance is cached for 1 s; commitments are live
    assert (int(before["treasury_available_lamports"]) - int(after["treasury_available_lamports"])
            == 10**9)
    quote_settings.PER_TRANSACTION_LIMIT_SOL = Decimal("10")
    assert treasury_quote_capacity()["max_lamports_spend"] == str(10 * 10**9)
