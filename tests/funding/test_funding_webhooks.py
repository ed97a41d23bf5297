"""Chain webhooks: HMAC-authenticated, payload only a hint. Sandbox verifies the signed
transaction inline; live mode answers 202 and a queued task asks the (fake) chain."""

from __future__ import annotations

import json
import time

import pytest
from django.test import Client

from quotes.models import QuoteStatus
from risk.models import AuditEvent
from settlement.ledger import unbalanced_entries
from settlement.models import FundingPayment, JournalEntry
from tests.funding.kit import (
    NEAR,
    execution_tasks,
    near_quote,
    near_signed,
    post_webhook,
    run_queued,
    run_scheduled,
    stellar_envelope,
    stellar_quote,
    webhook_body,
)

HINT_TASK = "settlement.tasks.payment_hint_process"


@pytest.fixture
def client():
    return Client()


def stellar_payment_body(quote, payer, treasury, amount=None, **extra):
    envelope = stellar_envelope(payer, treasury, amount or int(quote.total_cost),
                                memo_id=quote.payment_memo)
    return webhook_body("stellar", from_address=payer.public_key, to_address=treasury,
                        amount="999999", memo=quote.payment_memo, envelope_xdr=envelope, **extra)


def nothing_committed(quote) -> bool:
    quote.refresh_from_db()
    return (quote.status == QuoteStatus.PENDING and FundingPayment.objects.count() == 0
            and JournalEntry.objects.count() == 0 and execution_tasks() == [])


@pytest.mark.django_db
class TestSandboxWebhooks:
    @pytest.mark.parametrize("path", ["/api/v1/webhooks/stellar", "/webhook/stellar"])
    def test_signed_stellar_webhook_commits(self, client, user, treasury, payer, path,
                                            django_capture_on_commit_callbacks):
        quote = stellar_quote(user, treasury)
        with django_capture_on_commit_callbacks(execute=True):
            response = post_webhook(client, "stellar", stellar_payment_body(quote, payer, treasury),
                                    path=path)

        assert response.status_code == 200, response.json()
        body = response.json()
        assert body["accepted"] is True and body["quote_id"] == str(quote.pk)
        assert body["payment"]["status"] == "matched"
        # The hint said 999999 stroops; the chain (the signed envelope) says the real amount.
        assert body["payment"]["amount"] == str(int(quote.total_cost))
        assert FundingPayment.objects.get().source == "webhook"
        quote.refresh_from_db()
        assert quote.status == QuoteStatus.COMMITTED
        assert len(execution_tasks(quote.pk)) == 1

    @pytest.mark.parametrize("path", ["/api/v1/webhooks/near", "/webhook/near"])
    def test_signed_near_webhook_commits(self, client, user, near_payer, path,
                                         django_capture_on_commit_callbacks):
        quote = near_quote(user)
        signed = near_signed(near_payer, int(quote.total_cost), quote_id=str(quote.pk))
        body = webhook_body("near", signer_id=near_payer[2], amount="1", memo=str(quote.pk),
                            signed_transaction_base64=signed)
        with django_capture_on_commit_callbacks(execute=True):
            response = post_webhook(client, "near", body, path=path)

        assert response.status_code == 200, response.json()
        assert response.json()["payment"]["status"] == "matched"
        quote.refresh_from_db()
        assert quote.status == QuoteStatus.COMMITTED
        assert len(execution_tasks(quote.pk)) == 1

    def test_replayed_webhook_changes_nothing(self, client, user, treasury, payer,
                                              django_capture_on_commit_callbacks):
        quote = stellar_quote(user, treasury)
        body = stellar_payment_body(quote, payer, treasury)
        from config.webhooks import webhook_sign

        header = webhook_sign(body)
        with django_capture_on_commit_callbacks(execute=True):
            first = post_webhook(client, "stellar", body, signature=header)
        counts = (FundingPayment.objects.count(), JournalEntry.objects.count(),
                  AuditEvent.objects.count(), len(execution_tasks()))
        with django_capture_on_commit_callbacks(execute=True):
            second = post_webhook(client, "stellar", body, signature=header)

        assert first.status_code == second.status_code == 200
        assert second.json()["payment"]["replay"] is True
        assert second.json()["payment"]["payment_id"] == first.json()["payment"]["payment_id"]
        assert (FundingPayment.objects.count(), JournalEntry.objects.count(),
                AuditEvent.objects.count(), len(execution_tasks())) == counts == (1, 1, 2, 1)

    def test_sandbox_webhook_without_the_signed_transaction_is_refused(self, client, user, treasury):
        quote = stellar_quote(user, treasury)
        response = post_webhook(client, "stellar", webhook_body("stellar", memo=quote.payment_memo,
                                                                amount=str(quote.total_cost)))
        assert response.status_code == 400
        assert response.json()["error_code"] == "PAYMENT_INVALID"
        assert response.json()["details"]["reason"] == "MALFORMED"
        assert nothing_committed(quote)

    def test_malformed_json_is_a_400(self, client):
        body = b'{"transaction_hash": '
        response = post_webhook(client, "stellar", body)
        assert response.status_code == 400 and response.json()["error_code"] == "INVALID_REQUEST"


@pytest.mark.django_db
class TestWebhookSignatures:
    """Refused before anything is parsed, and audited."""

    @pytest.mark.parametrize("case", ["missing", "wrong_secret", "stale", "future", "tampered",
                                      "garbage"])
    def test_bad_signature_is_401_audited_and_commits_nothing(self, client, user, treasury, payer, case):
        from config.webhooks import webhook_sign

        quote = stellar_quote(user, treasury)
        body = stellar_payment_body(quote, payer, treasury)
        signature = {
            "missing": None,
            "wrong_secret": webhook_sign(body, secret="not-our-secret"),
            # Well outside the 300 s window: a "+301" signed now is only 300 s ahead once
            # the request takes a second on a loaded machine, and then rightly accepted.
            "stale": webhook_sign(body, timestamp=int(time.time()) - 330),
            "future": webhook_sign(body, timestamp=int(time.time()) + 330),
            "tampered": webhook_sign(body.replace(b'"999999"', b'"1"')),
            "garbage": "t=abc,v1=zz",
        }[case]

        response = post_webhook(client, "stellar", body, signature=signature)

        assert response.status_code == 401
        assert response.json()["error_code"] == "WEBHOOK_SIGNATURE_INVALID"
        audit = AuditEvent.objects.get(event_type="webhook_signature_invalid")
        assert audit.actor == "webhook:stellar"
        assert audit.details["reason"] == ("missing" if case == "missing" else "invalid_or_stale")
        assert audit.details["body_bytes"] == len(body)
        assert nothing_committed(quote)

    @pytest.mark.django_db(transaction=True)
    def test_the_refusal_audit_is_committed_although_the_request_fails(self, client):
        """transaction=True: real commits. Read back on a fresh connection of another thread."""
        import threading

        from django.db import connection

        response = post_webhook(client, "near", webhook_body("near"), signature=None)
        assert response.status_code == 401
        seen = []

        def read() -> None:
            try:
                seen.append(AuditEvent.objects.filter(event_type="webhook_signature_invalid",
                                                      actor="webhook:near").count())
            finally:
                connection.close()

        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
        assert seen == [1]

    def test_a_fresh_signature_within_tolerance_is_accepted(self, client, user, treasury, payer):
        from config.webhooks import webhook_sign

        quote = stellar_quote(user, treasury)
        body = stellar_payment_body(quote, payer, treasury)
        response = post_webhook(client, "stellar", body,
                                signature=webhook_sign(body, timestamp=int(time.time()) - 290))
        assert response.status_code == 200, response.json()


@pytest.mark.django_db
class TestLiveWebhooks:
    def test_live_stellar_webhook_is_queued_then_verified_on_horizon(self, client, user, treasury, payer,
                                                                     horizon,
                                                                     django_capture_on_commit_callbacks):
        quote = stellar_quote(user, treasury)
        envelope = stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo)
        tx_hash = horizon.add_transaction(envelope)["hash"]
        # The hint lies about everything but the hash: amount, memo and addresses are ignored.
        body = webhook_body("stellar", transaction_hash=tx_hash, amount="1", memo="123",
                            from_address="GLIAR", to_address="GELSEWHERE")

        response = post_webhook(client, "stellar", body)

        assert response.status_code == 202, response.json()
        assert response.json()["status"] == "queued"
        assert FundingPayment.objects.count() == 0  # nothing booked in the request
        with django_capture_on_commit_callbacks(execute=True):
            (result,) = run_queued(HINT_TASK)
        assert result["status"] == "matched" and result["committed"] is True
        payment = FundingPayment.objects.get()
        assert (payment.tx_hash, int(payment.amount), payment.source) == (
            tx_hash, int(quote.total_cost), "webhook")
        assert payment.chain_time is not None
        quote.refresh_from_db()
        assert quote.status == QuoteStatus.COMMITTED
        assert len(execution_tasks(quote.pk)) == 1
        assert unbalanced_entries() == []

    def test_hint_for_a_tx_horizon_has_not_seen_yet_is_retried(self, client, user, treasury, payer,
                                                               horizon):
        from django_q.models import Schedule

        quote = stellar_quote(user, treasury)
        envelope = stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo)
        from stellar_sdk import TransactionBuilder

        from tests.funding.kit import TESTNET

        tx_hash = TransactionBuilder.from_xdr(envelope, TESTNET).hash_hex()
        assert post_webhook(client, "stellar",
                            webhook_body("stellar", transaction_hash=tx_hash)).status_code == 202

        (first,) = run_queued(HINT_TASK)
        assert first["status"] == "retry_scheduled" and first["reason"] == "NOT_FOUND"
        assert Schedule.objects.filter(func=HINT_TASK).count() == 1
        assert FundingPayment.objects.count() == 0

        horizon.add_transaction(envelope)  # the ledger closes
        (second,) = run_scheduled(HINT_TASK)
        assert second["status"] == "matched"
        quote.refresh_from_db()
        assert quote.status == QuoteStatus.COMMITTED

    def test_hint_abandoned_after_the_last_retry_is_audited(self, horizon):
        from settlement.tasks import HINT_RETRY_DELAYS_SECONDS, payment_hint_process

        result = payment_hint_process("stellar", "cd" * 32, None,
                                      attempt=len(HINT_RETRY_DELAYS_SECONDS) + 1)
        assert result["status"] == "abandoned"
        assert AuditEvent.objects.filter(event_type="payment_hint_abandoned").count() == 1

    def test_failed_transaction_is_refused_and_commits_nothing(self, client, user, treasury, payer,
                                                               horizon):
        quote = stellar_quote(user, treasury)
        envelope = stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo)
        tx_hash = horizon.add_transaction(envelope, successful=False)["hash"]

        assert post_webhook(client, "stellar",
                            webhook_body("stellar", transaction_hash=tx_hash)).status_code == 202
        (result,) = run_queued(HINT_TASK)

        assert result == {"status": "refused", "reason": "TX_FAILED"}
        assert nothing_committed(quote)
        assert AuditEvent.objects.filter(event_type="payment_refused").count() == 1

    def test_live_near_webhook_needs_the_signer(self, client, user, near_rpc, near_payer):
        quote = near_quote(user)
        tx_hash = near_rpc.add_transaction(near_signed(near_payer, NEAR, quote_id=str(quote.pk)))
        response = post_webhook(client, "near", webhook_body("near", transaction_hash=tx_hash))
        assert response.status_code == 400
        assert response.json()["details"]["reason"] == "MALFORMED"
        assert nothing_committed(quote)

    def test_live_near_webhook_is_verified_by_rpc(self, client, user, near_rpc, near_payer,
                                                  django_capture_on_commit_callbacks):
        quote = near_quote(user)
        signed = near_signed(near_payer, int(quote.total_cost), quote_id=str(quote.pk))
        tx_hash = near_rpc.add_transaction(signed)
        response = post_webhook(client, "near", webhook_body("near", transaction_hash=tx_hash,
                                                             signer_id=near_payer[2], amount="1"))
        assert response.status_code == 202
        with django_capture_on_commit_callbacks(execute=True):
            (result,) = run_queued(HINT_TASK)
        assert result["status"] == "matched"
        rpc_calls = [json.loads(r.body)["method"] for r in near_rpc.requests]
        assert "EXPERIMENTAL_tx_status" in rpc_calls
        quote.refresh_from_db()
        assert quote.status == QuoteStatus.COMMITTED
        assert len(execution_tasks(quote.pk)) == 1

    def test_malformed_hash_is_refused_before_queueing(self, client, horizon):
        response = post_webhook(client, "stellar", webhook_body("stellar", transaction_hash="not-hex"))
        assert response.status_code == 400 and response.json()["details"]["reason"] == "MALFORMED"
        assert run_queued(HINT_TASK) == []
