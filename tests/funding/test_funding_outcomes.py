"""Every way a Stellar payment can turn out, through the client door in sandbox mode
(the signed envelope is the evidence): the right payment status, quote status, ledger
entry, refund record and queued execution, with the books balanced after each."""

from __future__ import annotations

import pytest
from stellar_sdk import Keypair

from quotes.models import QuoteStatus, QuoteTransition
from settlement.ledger import unbalanced_entries
from settlement.models import FundingPayment, JournalEntry, Refund, UserBalance
from tests.factories import UserFactory
from tests.funding.kit import (
    balances,
    execution_tasks,
    expire,
    stellar_envelope,
    stellar_quote,
)

pytestmark = pytest.mark.django_db

TREASURY_XLM = "treasury:stellar:XLM"
CUSTOMER_XLM = "customer_funds:stellar:XLM"
REFUNDS_XLM = "refunds_payable:stellar:XLM"
UNMATCHED_XLM = "unmatched_deposits:stellar:XLM"


def pay(api_client, quote, envelope_xdr):
    return api_client.post(f"/api/v1/quotes/{quote.pk}/payment", {"envelope_xdr": envelope_xdr},
                           format="json")


@pytest.fixture
def run_on_commit(django_capture_on_commit_callbacks):
    """Run after-commit work (execution enqueue, events) as a real commit would."""

    def run(fn, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(*args, **kwargs)

    return run


def test_exact_payment_commits_books_customer_funds_and_queues_one_execution(
        api_client, user, treasury, payer, run_on_commit):
    quote = stellar_quote(user, treasury)
    total = int(quote.total_cost)
    envelope = stellar_envelope(payer, treasury, total, memo_id=quote.payment_memo)

    response = run_on_commit(pay, api_client, quote, envelope)

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "committed"
    assert body["payment"]["status"] == "matched"
    assert body["payment"]["committed"] is True and body["payment"]["refund"] is None
    assert body["payment"]["amount"] == str(total)
    quote.refresh_from_db()
    assert quote.status == QuoteStatus.COMMITTED and quote.committed_at is not None
    transition = QuoteTransition.objects.get(quote=quote, to_status="committed")
    payment = FundingPayment.objects.get()
    assert transition.actor == "payment:api" and transition.tx_hash == payment.tx_hash
    assert (payment.quote_id, payment.user_id, payment.source) == (quote.pk, user.pk, "api")
    assert payment.from_address == payer.public_key and payment.memo == quote.payment_memo
    assert balances() == {TREASURY_XLM: total, CUSTOMER_XLM: -total}
    entry = JournalEntry.objects.get()
    assert entry.reference == f"payment:stellar:{payment.tx_hash}" and entry.quote_id == quote.pk
    assert len(execution_tasks(quote.pk)) == 1
    assert unbalanced_entries() == []


def test_replayed_payment_changes_nothing(api_client, user, treasury, payer, run_on_commit):
    quote = stellar_quote(user, treasury)
    envelope = stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo)
    first = run_on_commit(pay, api_client, quote, envelope).json()

    second = run_on_commit(pay, api_client, quote, envelope)

    assert second.status_code == 200
    assert second.json()["payment"]["replay"] is True
    assert second.json()["payment"]["payment_id"] == first["payment"]["payment_id"]
    assert FundingPayment.objects.count() == 1 and JournalEntry.objects.count() == 1
    assert QuoteTransition.objects.filter(quote=quote).count() == 1
    assert len(execution_tasks()) == 1


def test_overpaid_commits_and_refunds_the_excess(api_client, user, treasury, payer, run_on_commit):
    quote = stellar_quote(user, treasury, refund_to="GREFUNDDESTINATION")
    total, excess = int(quote.total_cost), 1_234_567
    envelope = stellar_envelope(payer, treasury, total + excess, memo_id=quote.payment_memo)

    body = run_on_commit(pay, api_client, quote, envelope).json()

    assert body["status"] == "committed" and body["payment"]["status"] == "overpaid"
    refund = Refund.objects.get()
    assert (refund.reason, int(refund.amount), refund.destination, refund.status) == (
        "overpaid", excess, "GREFUNDDESTINATION", "due")
    assert refund.quote_id == quote.pk and refund.user_id == user.pk
    assert body["payment"]["refund"]["amount"] == str(excess)
    assert balances() == {TREASURY_XLM: total + excess, CUSTOMER_XLM: -total, REFUNDS_XLM: -excess}
    assert len(execution_tasks(quote.pk)) == 1
    assert unbalanced_entries() == []


def test_underpaid_keeps_quote_pending_and_refunds_everything(api_client, user, treasury, payer,
                                                              run_on_commit):
    quote = stellar_quote(user, treasury, refund_to="")
    paid = int(quote.total_cost) - 1
    envelope = stellar_envelope(payer, treasury, paid, memo_id=quote.payment_memo)

    body = run_on_commit(pay, api_client, quote, envelope).json()

    assert body["status"] == "pending" and body["payment"]["status"] == "underpaid"
    refund = Refund.objects.get()
    # No refund_to on the quote: the money goes back to whoever paid.
    assert (refund.reason, int(refund.amount), refund.destination) == ("underpaid", paid, payer.public_key)
    assert balances() == {TREASURY_XLM: paid, REFUNDS_XLM: -paid}
    assert execution_tasks() == []
    assert unbalanced_entries() == []

    # The client then pays the full amount: that payment is judged on its own and commits.
    full = stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo)
    assert run_on_commit(pay, api_client, quote, full).json()["status"] == "committed"
    assert len(execution_tasks(quote.pk)) == 1


def test_late_payment_expires_the_quote_and_is_owed_back(api_client, user, treasury, payer,
                                                         run_on_commit):
    quote = stellar_quote(user, treasury)
    expire(quote)
    envelope = stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo)

    body = run_on_commit(pay, api_client, quote, envelope).json()

    assert body["status"] == "expired" and body["payment"]["status"] == "late"
    assert QuoteTransition.objects.filter(quote=quote, to_status="expired").count() == 1
    refund = Refund.objects.get()
    assert (refund.reason, refund.amount) == ("late", quote.total_cost)
    assert balances() == {TREASURY_XLM: int(quote.total_cost), REFUNDS_XLM: -int(quote.total_cost)}
    assert execution_tasks() == []
    assert unbalanced_entries() == []


def test_payment_for_a_cancelled_quote_is_owed_back(api_client, user, treasury, payer, run_on_commit):
    quote = stellar_quote(user, treasury, status=QuoteStatus.CANCELLED)
    envelope = stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo)

    body = run_on_commit(pay, api_client, quote, envelope).json()

    assert body["status"] == "cancelled" and body["payment"]["status"] == "late"
    assert Refund.objects.get().reason == "cancelled"
    assert execution_tasks() == []


def test_second_payment_for_a_paid_quote_is_a_duplicate_owed_back(api_client, user, treasury, payer,
                                                                   run_on_commit):
    quote = stellar_quote(user, treasury)
    total = int(quote.total_cost)
    first = stellar_envelope(payer, treasury, total, memo_id=quote.payment_memo)
    run_on_commit(pay, api_client, quote, first)

    body = run_on_commit(pay, api_client, quote,
                         stellar_envelope(payer, treasury, total, memo_id=quote.payment_memo)).json()

    assert body["status"] == "committed" and body["payment"]["status"] == "duplicate"
    assert FundingPayment.objects.count() == 2
    refund = Refund.objects.get()
    assert (refund.reason, int(refund.amount)) == ("duplicate", total)
    assert balances() == {TREASURY_XLM: 2 * total, CUSTOMER_XLM: -total, REFUNDS_XLM: -total}
    assert QuoteTransition.objects.filter(quote=quote, to_status="committed").count() == 1
    assert len(execution_tasks(quote.pk)) == 1
    assert unbalanced_entries() == []


def test_unknown_memo_is_held_unmatched_for_operators(treasury, payer, run_on_commit):
    from settlement.services.funding import payment_submit

    envelope = stellar_envelope(payer, treasury, 5_000_000, memo_id=999_999_999_999_999_999)

    outcome = run_on_commit(payment_submit, chain="stellar", source="webhook", envelope_xdr=envelope)

    assert outcome.status == "unmatched" and outcome.quote is None and outcome.refund is None
    payment = FundingPayment.objects.get()
    assert payment.resolved_at is None and payment.user_id is None
    assert balances() == {TREASURY_XLM: 5_000_000, UNMATCHED_XLM: -5_000_000}
    assert unbalanced_entries() == []


def test_payment_without_memo_is_unmatched(treasury, payer):
    from settlement.services.funding import payment_submit

    outcome = payment_submit(chain="stellar", source="webhook",
                             envelope_xdr=stellar_envelope(payer, treasury, 7))
    assert outcome.status == "unmatched"


def test_deposit_memo_credits_the_users_prepaid_balance(treasury, payer, run_on_commit):
    from settlement.services.funding import payment_submit

    depositor = UserFactory(deposit_memo=4242)
    first = run_on_commit(payment_submit, chain="stellar", source="watcher",
                          envelope_xdr=stellar_envelope(payer, treasury, 30_000_000, memo_id=4242))
    run_on_commit(payment_submit, chain="stellar", source="watcher",
                  envelope_xdr=stellar_envelope(payer, treasury, 12_000_000, memo_id=4242))

    assert first.status == "credited" and first.payment.user_id == depositor.pk
    balance = UserBalance.objects.get(user=depositor, chain="stellar")
    assert (int(balance.amount), int(balance.locked), balance.asset) == (42_000_000, 0, "XLM")
    assert balances() == {TREASURY_XLM: 42_000_000,
                          f"user_balance:{depositor.pk}:XLM": -42_000_000}
    assert Refund.objects.count() == 0
    assert unbalanced_entries() == []


def test_payment_event_reaches_the_user_after_commit(api_client, user, treasury, payer, run_on_commit):
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(f"user.{user.pk}", channel)
    quote = stellar_quote(user, treasury)

    run_on_commit(pay, api_client, quote,
                  stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo))

    events = []
    while True:
        try:
            events.append(async_to_sync(layer.receive)(channel)["event"])
        except Exception:
            break
        if len(events) == 2:
            break
    kinds = {e["event"]: e for e in events}
    assert kinds["payment.received"]["status"] == "matched"
    assert kinds["payment.received"]["quote_id"] == str(quote.pk)
    assert kinds["quote.status"]["status"] == "committed"


def test_memo_of_another_quote_is_refused_at_this_quotes_door(api_client, user, treasury, payer):
    mine, other = stellar_quote(user, treasury), stellar_quote(user, treasury)
    envelope = stellar_envelope(payer, treasury, int(other.total_cost), memo_id=other.payment_memo)

    response = pay(api_client, mine, envelope)

    assert response.status_code == 400
    assert response.json()["error_code"] == "PAYMENT_INVALID"
    assert response.json()["details"]["reason"] == "QUOTE_MISMATCH"
    assert FundingPayment.objects.count() == 0 and JournalEntry.objects.count() == 0


def test_someone_elses_quote_is_not_found(api_client, other_user, treasury, payer):
    theirs = stellar_quote(other_user, treasury)
    envelope = stellar_envelope(payer, treasury, int(theirs.total_cost), memo_id=theirs.payment_memo)

    response = pay(api_client, theirs, envelope)

    assert response.status_code == 404 and response.json()["error_code"] == "QUOTE_NOT_FOUND"
    assert FundingPayment.objects.count() == 0


@pytest.mark.parametrize("case", ["malformed", "wrong_network", "wrong_asset", "wrong_destination",
                                  "bad_signature", "hash_only_in_sandbox", "not_a_payment"])
def test_bad_payments_are_refused_with_a_code_and_nothing_is_written(api_client, user, treasury, payer,
                                                                     case):
    from stellar_sdk import Asset

    from tests.funding.kit import TESTNET  # noqa: F401 - the network the service expects

    quote = stellar_quote(user, treasury)
    total, memo = int(quote.total_cost), quote.payment_memo
    body, reason = {
        "malformed": ({"envelope_xdr": "AAAA-not-xdr"}, "MALFORMED"),
        "wrong_network": ({"envelope_xdr": stellar_envelope(
            payer, treasury, total, memo_id=memo,
            network_passphrase="Public Global Stellar Network ; September 2015")}, "WRONG_NETWORK"),
        "wrong_asset": ({"envelope_xdr": stellar_envelope(
            payer, treasury, total, memo_id=memo,
            asset=Asset("USDC", Keypair.random().public_key))}, "WRONG_ASSET"),
        "wrong_destination": ({"envelope_xdr": stellar_envelope(
            payer, Keypair.random().public_key, total, memo_id=memo)}, "WRONG_DESTINATION"),
        "bad_signature": ({"envelope_xdr": stellar_envelope(
            payer, treasury, total, memo_id=memo, signers=[Keypair.random()])}, "BAD_SIGNATURE"),
        "hash_only_in_sandbox": ({"tx_hash": "ab" * 32}, "MALFORMED"),
        "not_a_payment": ({"envelope_xdr": _account_merge(payer, treasury)}, "NOT_A_PAYMENT"),
    }[case]

    response = api_client.post(f"/api/v1/quotes/{quote.pk}/payment", body, format="json")

    assert response.status_code == 400, response.json()
    assert response.json()["error_code"] == "PAYMENT_INVALID"
    assert response.json()["details"]["reason"] == reason
    quote.refresh_from_db()
    assert quote.status == "pending"
    assert FundingPayment.objects.count() == 0 and JournalEntry.objects.count() == 0
    assert execution_tasks() == []


def _account_merge(payer: Keypair, treasury: str) -> str:
    from stellar_sdk import Account, TransactionBuilder

    from tests.funding.kit import TESTNET

    tx = (TransactionBuilder(Account(payer.public_key, 77), TESTNET, 100)
          .append_account_merge_op(treasury).set_timeout(300).build())
    tx.sign(payer)
    return tx.to_xdr()


def test_a_payment_reference_is_required(api_client, user, treasury):
    quote = stellar_quote(user, treasury)
    response = api_client.post(f"/api/v1/quotes/{quote.pk}/payment", {}, format="json")
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_REQUEST"


def test_malformed_quote_id_is_not_found(api_client):
    response = api_client.post("/api/v1/quotes/not-a-uuid/payment", {"tx_hash": "ab" * 32}, format="json")
    assert response.status_code == 404 and response.json()["error_code"] == "QUOTE_NOT_FOUND"
