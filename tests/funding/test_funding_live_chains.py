"""Live mode through the client door: the fake Horizon and NEAR JSON-RPC servers answer in
the real wire shapes with transactions signed by stellar-sdk and py-near. Whatever the
client says, amounts, memo, destination, success and finality come from the chain."""

from __future__ import annotations

import pytest
from stellar_sdk import Keypair

from quotes.models import QuoteStatus
from settlement.ledger import unbalanced_entries
from settlement.models import FundingPayment, JournalEntry, UserBalance
from tests.factories import UserFactory
from tests.fakes.horizon import FakeHorizon
from tests.funding.kit import (
    NEAR,
    balances,
    execution_tasks,
    near_quote,
    near_signed,
    stellar_envelope,
    stellar_quote,
)

pytestmark = pytest.mark.django_db


def pay(api_client, quote, **body):
    return api_client.post(f"/api/v1/quotes/{quote.pk}/payment", body, format="json")


def assert_refused(response, reason: str, quote) -> None:
    assert response.status_code == 400, response.json()
    assert response.json()["error_code"] == "PAYMENT_INVALID"
    assert response.json()["details"]["reason"] == reason
    quote.refresh_from_db()
    assert quote.status == QuoteStatus.PENDING
    assert FundingPayment.objects.count() == 0 and JournalEntry.objects.count() == 0
    assert execution_tasks() == []


class TestStellarHorizon:
    def test_tx_hash_is_verified_on_horizon_and_commits(self, api_client, user, treasury, payer, horizon,
                                                        django_capture_on_commit_callbacks):
        quote = stellar_quote(user, treasury)
        envelope = stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo)
        tx_hash = horizon.add_transaction(envelope)["hash"]

        with django_capture_on_commit_callbacks(execute=True):
            response = pay(api_client, quote, tx_hash=tx_hash.upper())  # hex case is not identity

        assert response.status_code == 200, response.json()
        assert response.json()["status"] == "committed"
        payment = FundingPayment.objects.get()
        assert payment.tx_hash == tx_hash and payment.chain_details["verified"]["mode"] == "live"
        assert any(r.path == f"/transactions/{tx_hash}" for r in horizon.requests)
        assert len(execution_tasks(quote.pk)) == 1

    def test_known_hash_is_answered_without_asking_horizon_again(self, api_client, user, treasury, payer,
                                                                 horizon):
        quote = stellar_quote(user, treasury)
        tx_hash = horizon.add_transaction(
            stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo))["hash"]
        pay(api_client, quote, tx_hash=tx_hash)
        asked = len(horizon.requests)

        replay = pay(api_client, quote, tx_hash=tx_hash)

        assert replay.status_code == 200 and replay.json()["payment"]["replay"] is True
        assert len(horizon.requests) == asked
        assert FundingPayment.objects.count() == 1

    def test_envelope_in_live_mode_only_names_the_tx(self, api_client, user, treasury, payer, horizon):
        """An envelope that never landed proves nothing in live mode."""
        quote = stellar_quote(user, treasury)
        envelope = stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo)
        assert_refused(pay(api_client, quote, envelope_xdr=envelope), "NOT_FOUND", quote)
        horizon.add_transaction(envelope)
        assert pay(api_client, quote, envelope_xdr=envelope).json()["status"] == "committed"

    def test_failed_transaction_is_refused(self, api_client, user, treasury, payer, horizon):
        quote = stellar_quote(user, treasury)
        tx_hash = horizon.add_transaction(
            stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo),
            successful=False)["hash"]
        assert_refused(pay(api_client, quote, tx_hash=tx_hash), "TX_FAILED", quote)

    def test_wrong_destination_and_asset_on_chain_are_refused(self, api_client, user, treasury, payer,
                                                              horizon):
        from stellar_sdk import Asset

        quote = stellar_quote(user, treasury)
        elsewhere = horizon.add_transaction(stellar_envelope(
            payer, Keypair.random().public_key, int(quote.total_cost), memo_id=quote.payment_memo))["hash"]
        token = horizon.add_transaction(stellar_envelope(
            payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo,
            asset=Asset("USDC", Keypair.random().public_key)))["hash"]
        assert_refused(pay(api_client, quote, tx_hash=elsewhere), "WRONG_DESTINATION", quote)
        assert_refused(pay(api_client, quote, tx_hash=token), "WRONG_ASSET", quote)

    def test_horizon_of_another_network_is_refused(self, api_client, user, treasury, payer, settings):
        public = "Public Global Stellar Network ; September 2015"
        with FakeHorizon(public) as other:
            settings.CHAIN_MODE, settings.STELLAR_HORIZON_URL = "live", other.url
            quote = stellar_quote(user, treasury)
            tx_hash = other.add_transaction(stellar_envelope(
                payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo,
                network_passphrase=public))["hash"]
            assert_refused(pay(api_client, quote, tx_hash=tx_hash), "WRONG_NETWORK", quote)

    @pytest.mark.parametrize("fault", ["503", "reset", "timeout"])
    def test_horizon_down_is_503_chain_unavailable(self, api_client, user, treasury, payer, horizon,
                                                   settings, fault):
        settings.CHAIN_HTTP_TIMEOUT_SECONDS = 0.5
        horizon.fault_delay = 1.5
        quote = stellar_quote(user, treasury)
        tx_hash = horizon.add_transaction(
            stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo))["hash"]
        horizon.set_fault(fault)

        response = pay(api_client, quote, tx_hash=tx_hash)

        assert response.status_code == 503 and response.json()["error_code"] == "CHAIN_UNAVAILABLE"
        assert FundingPayment.objects.count() == 0
        horizon.set_fault(None)
        assert pay(api_client, quote, tx_hash=tx_hash).json()["status"] == "committed"

    def test_lateness_is_judged_by_ledger_close_time(self, api_client, user, treasury, payer, horizon):
        """Paid in time but reported after expiry: honoured. Closed after expiry: late."""
        import datetime as dt

        from tests.funding.kit import expire

        in_time, too_late = stellar_quote(user, treasury), stellar_quote(user, treasury)
        expire(in_time)
        expire(too_late)
        before = in_time.expires_at - dt.timedelta(seconds=30)
        after = too_late.expires_at + dt.timedelta(seconds=1)
        paid_in_time = horizon.add_transaction(stellar_envelope(
            payer, treasury, int(in_time.total_cost), memo_id=in_time.payment_memo),
            created_at=before)["hash"]
        paid_late = horizon.add_transaction(stellar_envelope(
            payer, treasury, int(too_late.total_cost), memo_id=too_late.payment_memo),
            created_at=after)["hash"]

        honoured = pay(api_client, in_time, tx_hash=paid_in_time).json()
        refused = pay(api_client, too_late, tx_hash=paid_late).json()

        assert (honoured["status"], honoured["payment"]["status"]) == ("committed", "matched")
        assert (refused["status"], refused["payment"]["status"]) == ("expired", "late")
        assert refused["payment"]["refund"]["reason"] == "late"
        assert unbalanced_entries() == []


class TestNearRpc:
    def test_tx_hash_and_sender_are_verified_by_rpc_and_commit(self, api_client, user, near_payer,
                                                               near_rpc, django_capture_on_commit_callbacks):
        quote = near_quote(user)
        total = int(quote.total_cost)
        tx_hash = near_rpc.add_transaction(near_signed(near_payer, total, quote_id=str(quote.pk)))

        with django_capture_on_commit_callbacks(execute=True):
            response = pay(api_client, quote, tx_hash=tx_hash, sender=near_payer[2])

        assert response.status_code == 200, response.json()
        assert response.json()["status"] == "committed"
        payment = FundingPayment.objects.get()
        assert (payment.chain, payment.tx_hash, int(payment.amount)) == ("near", tx_hash, total)
        assert payment.memo_type == "quote_id" and payment.memo == str(quote.pk)
        assert balances() == {"treasury:near:NEAR": total, "customer_funds:near:NEAR": -total}
        assert len(execution_tasks(quote.pk)) == 1

    def test_signed_transaction_in_live_mode_is_looked_up_by_its_hash(self, api_client, user, near_payer,
                                                                      near_rpc):
        quote = near_quote(user)
        signed = near_signed(near_payer, int(quote.total_cost), quote_id=str(quote.pk))
        near_rpc.add_transaction(signed)
        response = pay(api_client, quote, signed_transaction_base64=signed)
        assert response.json()["status"] == "committed"

    def test_failed_receipt_is_refused(self, api_client, user, near_payer, near_rpc):
        quote = near_quote(user)
        tx_hash = near_rpc.add_transaction(
            near_signed(near_payer, int(quote.total_cost), quote_id=str(quote.pk)), status="failure")
        assert_refused(pay(api_client, quote, tx_hash=tx_hash, sender=near_payer[2]), "TX_FAILED", quote)

    def test_not_final_is_no_verdict_yet(self, api_client, user, near_payer, near_rpc):
        quote = near_quote(user)
        tx_hash = near_rpc.add_transaction(
            near_signed(near_payer, int(quote.total_cost), quote_id=str(quote.pk)), status="not_final")
        response = pay(api_client, quote, tx_hash=tx_hash, sender=near_payer[2])
        assert response.status_code == 503 and response.json()["error_code"] == "CHAIN_UNAVAILABLE"
        near_rpc.set_status(tx_hash, "success")
        assert pay(api_client, quote, tx_hash=tx_hash, sender=near_payer[2]).json()["status"] == "committed"

    def test_wrong_receiver_and_wrong_sender_are_refused(self, api_client, user, near_payer, near_rpc):
        quote = near_quote(user)
        elsewhere = near_rpc.add_transaction(near_signed(
            near_payer, int(quote.total_cost), quote_id=str(quote.pk), receiver="someone.test.near"))
        assert_refused(pay(api_client, quote, tx_hash=elsewhere, sender=near_payer[2]),
                       "WRONG_DESTINATION", quote)
        mine = near_rpc.add_transaction(
            near_signed(near_payer, int(quote.total_cost), quote_id=str(quote.pk)))
        assert_refused(pay(api_client, quote, tx_hash=mine, sender="mallory.test.near"), "NOT_FOUND", quote)

    def test_deposit_call_credits_the_balance(self, near_payer, near_rpc):
        from settlement.services.funding import payment_submit

        depositor = UserFactory(deposit_memo=31337)
        tx_hash = near_rpc.add_transaction(near_signed(near_payer, 3 * NEAR, memo="31337"))
        outcome = payment_submit(chain="near", source="webhook", tx_hash=tx_hash, sender=near_payer[2])
        assert outcome.status == "credited"
        assert int(UserBalance.objects.get(user=depositor, chain="near").amount) == 3 * NEAR
        assert unbalanced_entries() == []


@pytest.mark.django_db
class TestNearSandbox:
    def test_signed_transaction_commits(self, api_client, user, near_payer):
        quote = near_quote(user)
        signed = near_signed(near_payer, int(quote.total_cost) + 5, quote_id=str(quote.pk))
        body = pay(api_client, quote, signed_transaction_base64=signed).json()
        assert body["status"] == "committed" and body["payment"]["status"] == "overpaid"
        assert body["payment"]["refund"] == {**body["payment"]["refund"], "amount": "5",
                                             "destination": "refund.test.near", "reason": "overpaid"}
        assert unbalanced_entries() == []

    def test_plain_transfer_has_no_memo_and_is_unmatched(self, near_payer):
        from settlement.services.funding import payment_submit

        outcome = payment_submit(chain="near", source="webhook",
                                 signed_transaction_base64=near_signed(near_payer, NEAR))
        assert outcome.status == "unmatched"
        assert balances() == {"treasury:near:NEAR": NEAR, "unmatched_deposits:near:NEAR": -NEAR}

    def test_quote_id_of_a_stellar_quote_does_not_match_on_near(self, user, treasury, near_payer):
        from settlement.services.funding import payment_submit

        stellar = stellar_quote(user, treasury)
        outcome = payment_submit(chain="near", source="webhook",
                                 signed_transaction_base64=near_signed(near_payer, NEAR,
                                                                       quote_id=str(stellar.pk)))
        assert outcome.status == "unmatched"

    @pytest.mark.parametrize("case", ["tampered", "wrong_receiver", "garbage", "other_key"])
    def test_bad_signed_transactions_are_refused(self, api_client, user, near_payer, case):
        import base64

        from tests.fakes.near_rpc import near_keypair

        quote = near_quote(user)
        good = near_signed(near_payer, int(quote.total_cost), quote_id=str(quote.pk))
        raw = bytearray(base64.b64decode(good))
        raw[-70] ^= 0x01  # a byte of the transaction body (before the 65-byte signature)
        mallory_key = near_keypair()[0]
        signed, reason = {
            "tampered": (base64.b64encode(bytes(raw)).decode(), "BAD_SIGNATURE"),
            "wrong_receiver": (near_signed(near_payer, int(quote.total_cost), quote_id=str(quote.pk),
                                           receiver="evil.test.near"), "WRONG_DESTINATION"),
            "garbage": ("bm90IGEgdHJhbnNhY3Rpb24=", "MALFORMED"),
            # An implicit account's key IS its id: another key cannot sign for it.
            "other_key": (near_signed((mallory_key, "", near_payer[2]), int(quote.total_cost),
                                      quote_id=str(quote.pk)), "BAD_SIGNATURE"),
        }[case]
        assert_refused(pay(api_client, quote, signed_transaction_base64=signed), reason, quote)
