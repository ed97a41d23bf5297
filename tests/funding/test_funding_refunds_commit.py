"""Refund records through their states and out of the books; unmatched payments resolved by
an operator; the seed's `POST /commit`, which never commits without a verified payment."""

from __future__ import annotations

import pytest

from config.errors import ServiceError
from quotes.models import QuoteStatus
from risk.models import AuditEvent
from settlement.ledger import unbalanced_entries
from settlement.models import FundingPayment, JournalEntry, Refund
from settlement.services.funding import payment_submit
from settlement.services.refunds import (
    refund_complete,
    refund_create,
    refund_mark,
    unmatched_payment_refund,
)
from tests.funding.kit import balances, execution_tasks, expire, stellar_envelope, stellar_quote

pytestmark = pytest.mark.django_db

TREASURY, REFUNDS = "treasury:stellar:XLM", "refunds_payable:stellar:XLM"


@pytest.fixture
def underpaid_refund(user, treasury, payer) -> Refund:
    quote = stellar_quote(user, treasury)
    outcome = payment_submit(chain="stellar", source="webhook", envelope_xdr=stellar_envelope(
        payer, treasury, int(quote.total_cost) - 10, memo_id=quote.payment_memo))
    assert outcome.refund is not None
    return outcome.refund


def test_refund_goes_due_approved_sent_completed_and_leaves_the_books(underpaid_refund):
    refund_mark(refund_id=underpaid_refund.pk, to_status="approved", actor="operator:alice")
    refund_mark(refund_id=underpaid_refund.pk, to_status="sent", actor="operator:alice",
                tx_hash="ab" * 32, signed_transaction="AAAA")

    refund = refund_complete(refund_id=underpaid_refund.pk, tx_hash="ab" * 32, actor="operator:alice")

    assert (refund.status, refund.approved_by, refund.tx_hash) == ("completed", "operator:alice", "ab" * 32)
    # Received, owed, paid back: nothing left on either account.
    assert balances() == {TREASURY: 0, REFUNDS: 0}
    assert JournalEntry.objects.filter(reference=f"refund:{refund.pk}").count() == 1
    assert [e.event_type for e in AuditEvent.objects.filter(entity_type="refund").order_by("created_at")] \
        == ["refund_due", "refund_approved", "refund_sent", "refund_completed"]
    assert unbalanced_entries() == []


def test_a_refund_completes_once(underpaid_refund):
    refund_mark(refund_id=underpaid_refund.pk, to_status="approved", actor="op")
    refund_complete(refund_id=underpaid_refund.pk, tx_hash="cd" * 32, actor="op")
    with pytest.raises(ServiceError) as refused:
        refund_complete(refund_id=underpaid_refund.pk, tx_hash="cd" * 32, actor="op")
    assert refused.value.code == "INVALID_STATE_TRANSITION"
    assert JournalEntry.objects.filter(kind="refund_paid").count() == 1


@pytest.mark.parametrize(("path", "to_status"), [((), "sent"), ((), "completed"), (("approved",), "due")])
def test_refund_state_machine_refuses_skips(underpaid_refund, path, to_status):
    for step in path:
        refund_mark(refund_id=underpaid_refund.pk, to_status=step, actor="op")
    with pytest.raises(ServiceError):
        refund_mark(refund_id=underpaid_refund.pk, to_status=to_status, actor="op", tx_hash="ef" * 32)


def test_failed_payout_can_be_retried(underpaid_refund):
    for step, tx in (("approved", ""), ("sent", "01" * 32), ("failed", ""), ("approved", ""),
                     ("sent", "02" * 32)):
        refund_mark(refund_id=underpaid_refund.pk, to_status=step, actor="op", tx_hash=tx)
    assert refund_complete(refund_id=underpaid_refund.pk, tx_hash="02" * 32, actor="op").status == "completed"


def test_refund_create_is_once_per_payment_and_reason(underpaid_refund):
    from django.db import transaction

    payment = underpaid_refund.funding_payment
    with transaction.atomic():
        again = refund_create(reason="underpaid", payment=payment, quote=underpaid_refund.quote,
                              amount=int(underpaid_refund.amount), destination="GELSEWHERE")
    assert again.pk == underpaid_refund.pk and Refund.objects.count() == 1


def test_operator_refunds_an_unmatched_payment(treasury, payer):
    outcome = payment_submit(chain="stellar", source="watcher",
                             envelope_xdr=stellar_envelope(payer, treasury, 4_000, memo_id=12345))
    assert outcome.status == "unmatched"

    refund = unmatched_payment_refund(payment_id=outcome.payment.pk, actor="operator:bob")

    assert (refund.reason, int(refund.amount), refund.destination) == ("unmatched", 4_000, payer.public_key)
    assert balances() == {TREASURY: 4_000, "unmatched_deposits:stellar:XLM": 0, REFUNDS: -4_000}
    assert FundingPayment.objects.get().resolved_at is not None
    with pytest.raises(ServiceError):  # resolved once
        unmatched_payment_refund(payment_id=outcome.payment.pk, actor="operator:bob")
    assert Refund.objects.count() == 1
    assert unbalanced_entries() == []


class TestSeedCommit:
    def test_commit_without_a_payment_reference_is_refused(self, api_client, user, treasury):
        quote = stellar_quote(user, treasury)
        response = api_client.post("/commit", {"quote_id": str(quote.pk)}, format="json")
        assert response.status_code == 400 and response.json()["error_code"] == "INVALID_REQUEST"
        quote.refresh_from_db()
        assert quote.status == QuoteStatus.PENDING and FundingPayment.objects.count() == 0

    def test_commit_requires_a_token(self, anon_client, user, treasury, payer):
        quote = stellar_quote(user, treasury)
        envelope = stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo)
        response = anon_client.post("/commit", {"quote_id": str(quote.pk), "envelope_xdr": envelope},
                                    format="json")
        assert response.status_code == 401 and FundingPayment.objects.count() == 0

    def test_commit_with_a_verified_payment(self, api_client, user, treasury, payer,
                                            django_capture_on_commit_callbacks):
        quote = stellar_quote(user, treasury)
        envelope = stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo)
        with django_capture_on_commit_callbacks(execute=True):
            response = api_client.post("/commit", {"quote_id": str(quote.pk), "envelope_xdr": envelope},
                                       format="json")
        assert response.status_code == 200, response.json()
        assert response.json()["status"] == "committed"
        assert len(execution_tasks(quote.pk)) == 1
        again = api_client.post("/commit", {"quote_id": str(quote.pk), "envelope_xdr": envelope},
                                format="json")
        assert again.status_code == 200 and again.json()["payment"]["replay"] is True
        assert len(execution_tasks(quote.pk)) == 1

    @pytest.mark.parametrize(("case", "status", "code"), [
        ("late", 400, "QUOTE_EXPIRED"),
        ("underpaid", 400, "INSUFFICIENT_FUNDS"),
        ("duplicate", 409, "QUOTE_NOT_PENDING"),
    ])
    def test_commit_that_does_not_commit_says_why(self, api_client, user, treasury, payer, case, status,
                                                  code):
        quote = stellar_quote(user, treasury)
        total = int(quote.total_cost)
        if case == "late":
            expire(quote)
        if case == "duplicate":
            payment_submit(chain="stellar", source="webhook", envelope_xdr=stellar_envelope(
                payer, treasury, total, memo_id=quote.payment_memo))
        amount = total - 1 if case == "underpaid" else total
        envelope = stellar_envelope(payer, treasury, amount, memo_id=quote.payment_memo)

        response = api_client.post("/commit", {"quote_id": str(quote.pk), "envelope_xdr": envelope},
                                   format="json")

        assert response.status_code == status and response.json()["error_code"] == code
        # The money arrived all the same: it is recorded and owed back.
        assert response.json()["details"]["payment"]["refund"]["reason"] == case
        assert unbalanced_entries() == []

    def test_idempotency_key_replays_the_first_response(self, api_client, user, treasury, payer):
        quote = stellar_quote(user, treasury)
        envelope = stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo)
        body = {"quote_id": str(quote.pk), "envelope_xdr": envelope}
        first = api_client.post("/commit", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
        second = api_client.post("/commit", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
        assert first.status_code == second.status_code == 200
        assert second.headers.get("Idempotent-Replayed") == "true"
        assert second.json() == first.json()
        other = api_client.post("/commit", {**body, "tx_hash": "00" * 32}, format="json",
                                HTTP_IDEMPOTENCY_KEY="k-1")
        assert other.status_code == 422
