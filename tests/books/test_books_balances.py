"""Prepaid balances: a deposit credits the balance, a quote paid from it locks the total at
commit, execution debits it once, failure unlocks it once; the API shows total / locked /
available and the history; every change is a balanced entry the cached row agrees with, and
reaches the user's stream as `balance.updated` after commit."""

from __future__ import annotations

import datetime as dt

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

from config.errors import Conflict
from quotes.models import Quote
from quotes.services.transitions import quote_transition
from settlement.ledger import account_balance, account_code, unbalanced_entries
from settlement.models import JournalEntry
from settlement.selectors import user_balance_disagreements
from settlement.services.balances import (
    InsufficientFunds,
    balance_release_quote,
    balance_settle_quote,
    quote_is_balance_funded,
    quote_pay_from_balance,
)
from tests.books.books_kit import NEAR, XLM, Customer, balance_of, deposit, ledger_of, run_threads
from tests.conftest import client_for
from tests.factories import QuoteFactory

pytestmark = pytest.mark.django_db


def _quote(customer: Customer, total: int, chain: str = "stellar", **kwargs) -> Quote:
    fee, gas = 1_000, 500
    asset = "XLM" if chain == "stellar" else "NEAR"
    return QuoteFactory(user=customer.user, source_chain=chain, source_asset=asset,
                        source_amount=total - fee - gas, service_fee=fee, gas_estimate=gas,
                        total_cost=total, **kwargs)


def _agree() -> None:
    assert unbalanced_entries() == []
    assert user_balance_disagreements() == []


def test_deposit_then_pay_a_quote_from_the_balance(django_capture_on_commit_callbacks):
    customer = Customer()
    deposit(customer, "stellar", 100 * XLM)
    quote = _quote(customer, 30 * XLM)
    client = client_for(customer.user)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/quotes/{quote.pk}/pay-from-balance")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "committed"
    assert body["balance"]["total"] == str(100 * XLM)
    assert body["balance"]["locked"] == str(30 * XLM)
    assert body["balance"]["available"] == str(70 * XLM)
    quote.refresh_from_db()
    assert quote.status == "committed" and quote.pay_from_balance
    assert quote.transitions.last().actor == "balance"
    assert quote_is_balance_funded(quote_id=quote.pk)
    assert ledger_of(customer.user, "XLM") == {"user_balance": 70 * XLM, "user_locked": 30 * XLM,
                                               "withdrawals_payable": 0}
    from django_q.models import OrmQ

    queued = [q for q in OrmQ.objects.all() if q.func() == "execution.tasks.execute_quote"]
    assert [q.args() for q in queued] == [(str(quote.pk),)]
    _agree()


def test_paying_more_than_available_is_refused_and_changes_nothing():
    customer = Customer()
    deposit(customer, "near", 1 * NEAR)
    quote = _quote(customer, 1 * NEAR + 1, chain="near")
    entries = JournalEntry.objects.count()

    response = client_for(customer.user).post(f"/api/v1/quotes/{quote.pk}/pay-from-balance")

    assert response.status_code == 400
    assert response.json()["error_code"] == "INSUFFICIENT_FUNDS"
    assert response.json()["details"] == {"chain": "near", "asset": "NEAR",
                                          "available": str(NEAR), "required": str(NEAR + 1)}
    quote.refresh_from_db()
    assert quote.status == "pending" and not quote.pay_from_balance
    assert JournalEntry.objects.count() == entries
    assert balance_of(customer.user, "near") == (NEAR, 0)


def test_someone_elses_expired_or_paid_quote_cannot_be_paid_from_balance():
    customer, stranger = Customer(), Customer()
    deposit(customer, "stellar", 100 * XLM)
    client = client_for(customer.user)

    foreign = _quote(stranger, XLM)
    assert client.post(f"/api/v1/quotes/{foreign.pk}/pay-from-balance").json()["error_code"] == \
        "QUOTE_NOT_FOUND"
    assert client.post("/api/v1/quotes/not-a-uuid/pay-from-balance").status_code == 404

    past = timezone.now() - dt.timedelta(seconds=1)
    expired = _quote(customer, XLM, created_at=past - dt.timedelta(minutes=5), expires_at=past)
    response = client.post(f"/api/v1/quotes/{expired.pk}/pay-from-balance")
    assert (response.status_code, response.json()["error_code"]) == (400, "QUOTE_EXPIRED")

    paid = _quote(customer, XLM)
    assert client.post(f"/api/v1/quotes/{paid.pk}/pay-from-balance").status_code == 200
    again = client.post(f"/api/v1/quotes/{paid.pk}/pay-from-balance")
    assert (again.status_code, again.json()["error_code"]) == (409, "QUOTE_NOT_PENDING")
    assert balance_of(customer.user, "stellar") == (100 * XLM, XLM)


@pytest.mark.django_db(transaction=True)
def test_concurrent_quotes_cannot_lock_more_than_the_balance():
    customer = Customer()
    deposit(customer, "stellar", 100 * XLM)
    quotes = [_quote(customer, 40 * XLM) for _ in range(5)]

    results = run_threads([lambda q=q: quote_pay_from_balance(user=customer.user, quote_id=q.pk)
                           for q in quotes])

    assert sum(isinstance(r, Quote) for r in results) == 2
    assert sum(isinstance(r, InsufficientFunds) for r in results) == 3
    assert balance_of(customer.user, "stellar") == (100 * XLM, 80 * XLM)
    assert Quote.objects.filter(status="committed").count() == 2
    _agree()


def _as_executor(quote: Quote, to: str) -> None:
    """What the executor's success / failure transaction does to the quote first."""
    quote_transition(quote_id=quote.pk, to_status="executing", actor="test:executor")
    quote_transition(quote_id=quote.pk, to_status=to, actor="test:executor")


def test_execution_success_debits_the_locked_funds_once_and_earns_revenue():
    customer = Customer()
    deposit(customer, "stellar", 100 * XLM)
    quote = quote_pay_from_balance(user=customer.user, quote_id=_quote(customer, 30 * XLM).pk)

    with transaction.atomic():
        _as_executor(quote, "executed")
        assert balance_settle_quote(quote=quote) is True
    with transaction.atomic():
        assert balance_settle_quote(quote=quote) is True  # a retried worker: nothing more

    assert balance_of(customer.user, "stellar") == (70 * XLM, 0)
    assert ledger_of(customer.user, "XLM") == {"user_balance": 70 * XLM, "user_locked": 0,
                                               "withdrawals_payable": 0}
    assert account_balance(account_code("revenue", "stellar", "XLM")) == -30 * XLM
    entry = JournalEntry.objects.get(reference=f"revenue:{quote.pk}")
    assert entry.kind == "balance_settle"
    # Customer funds were never touched: this quote was not paid on chain.
    assert account_balance(account_code("customer_funds", "stellar", "XLM")) == 0
    with transaction.atomic(), pytest.raises(Conflict):
        balance_release_quote(quote=quote)
    _agree()


def test_execution_failure_unlocks_once_and_the_quote_is_refunded_to_the_balance():
    customer = Customer()
    deposit(customer, "near", 5 * NEAR)
    quote = quote_pay_from_balance(user=customer.user, quote_id=_quote(customer, 2 * NEAR, "near").pk)

    with transaction.atomic():
        _as_executor(quote, "failed")
        assert balance_release_quote(quote=quote, reason="SIMULATION_FAILED") is True
    with transaction.atomic():
        assert balance_release_quote(quote=quote) is True

    quote.refresh_from_db()
    assert quote.status == "refunded"
    assert list(quote.transitions.values_list("to_status", flat=True))[-2:] == ["refund_due", "refunded"]
    assert balance_of(customer.user, "near") == (5 * NEAR, 0)
    assert JournalEntry.objects.filter(reference=f"balance_release:{quote.pk}").count() == 1
    with transaction.atomic(), pytest.raises(Conflict):
        balance_settle_quote(quote=quote)
    _agree()


def test_a_quote_paid_on_chain_is_not_touched_by_the_balance_hooks():
    customer = Customer()
    quote = _quote(customer, XLM)
    with transaction.atomic():
        assert balance_settle_quote(quote=quote) is False
        assert balance_release_quote(quote=quote) is False
    assert JournalEntry.objects.count() == 0


def test_balances_api_shows_total_locked_available_and_deposit_instructions(settings):
    customer = Customer()
    deposit(customer, "stellar", 12 * XLM + 5)
    quote_pay_from_balance(user=customer.user, quote_id=_quote(customer, 2 * XLM).pk)

    body = client_for(customer.user).get("/api/v1/balances").json()

    by_chain = {b["chain"]: b for b in body["balances"]}
    assert by_chain["stellar"] == {
        "chain": "stellar", "asset": "XLM", "decimals": 7,
        "total": str(12 * XLM + 5), "locked": str(2 * XLM), "available": str(10 * XLM + 5),
        "display": {"total": "12.0000005", "locked": "2", "available": "10.0000005"},
        "deposit": {"address": settings.STELLAR_TREASURY_ADDRESS, "memo_type": "id",
                    "memo": str(customer.user.deposit_memo)},
    }
    assert by_chain["near"]["total"] == "0" and by_chain["near"]["deposit"]["method"] == "deposit"


def test_history_lists_the_users_own_movements_newest_first_paginated():
    customer, other = Customer(), Customer()
    deposit(customer, "stellar", 10 * XLM)
    deposit(other, "stellar", 99 * XLM)
    quote_pay_from_balance(user=customer.user, quote_id=_quote(customer, 4 * XLM).pk)

    client = client_for(customer.user)
    page = client.get("/api/v1/balances/history?limit=2").json()

    assert page["count"] == 3  # deposit, and the lock's two legs (available -4, locked +4)
    kinds = [(i["kind"], i["account"], i["amount"]) for i in page["results"]]
    assert sorted(kinds) == [("balance_lock", "available", str(-4 * XLM)),
                             ("balance_lock", "locked", str(4 * XLM))]
    rest = client.get("/api/v1/balances/history?limit=2&offset=2").json()["results"]
    assert [(i["kind"], i["amount"], i["amount_display"]) for i in rest] == [
        ("balance_deposit", str(10 * XLM), "10")]
    assert client.get("/api/v1/balances/history?chain=near").json()["count"] == 0
    assert client.get("/api/v1/balances/history?chain=solana").status_code == 400


def test_withdrawal_api_is_idempotent_and_private():
    customer, stranger = Customer(), Customer()
    deposit(customer, "stellar", 10 * XLM)
    client = client_for(customer.user)
    headers = {"HTTP_IDEMPOTENCY_KEY": "w-1"}

    first = client.post("/api/v1/withdrawals", {"chain": "stellar", "amount": str(3 * XLM)},
                        format="json", **headers)
    replay = client.post("/api/v1/withdrawals", {"chain": "stellar", "amount": str(3 * XLM)},
                         format="json", **headers)

    assert first.status_code == 201, first.json()
    assert replay.status_code == 201 and replay["Idempotent-Replayed"] == "true"
    assert replay.json()["withdrawal_id"] == first.json()["withdrawal_id"]
    assert first.json()["destination"] == customer.stellar.public_key
    assert balance_of(customer.user, "stellar") == (10 * XLM, 3 * XLM)
    withdrawal_id = first.json()["withdrawal_id"]
    assert client.get(f"/api/v1/withdrawals/{withdrawal_id}").json()["status"] == "approved"
    assert client.get("/api/v1/withdrawals").json()["count"] == 1
    assert client_for(stranger.user).get(f"/api/v1/withdrawals/{withdrawal_id}").status_code == 404
    assert client.get("/api/v1/withdrawals/nope").status_code == 404


@pytest.mark.parametrize("body", [
    {"chain": "stellar", "amount": "abc"}, {"chain": "stellar", "amount": "-5"},
    {"chain": "stellar", "amount": 5}, {"chain": "stellar", "amount": "1.5"},
    {"chain": "solana", "amount": "5"}, {"chain": "stellar", "amount": "5", "to": "elsewhere"},
    {"chain": "stellar", "amount": "0"}, {"chain": "stellar", "amount": "9" * 80},
])
def test_withdrawal_bad_input_is_refused_and_writes_nothing(body):
    customer = Customer()
    deposit(customer, "stellar", 10 * XLM)
    response = client_for(customer.user).post("/api/v1/withdrawals", body, format="json")
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_REQUEST"
    assert balance_of(customer.user, "stellar") == (10 * XLM, 0)


def test_every_balance_change_reaches_the_users_stream_after_commit(django_capture_on_commit_callbacks):
    customer = Customer()
    deposit(customer, "stellar", 10 * XLM)
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(f"user.{customer.user.pk}", channel)
    quote = _quote(customer, 4 * XLM)

    with django_capture_on_commit_callbacks(execute=True):
        quote_pay_from_balance(user=customer.user, quote_id=quote.pk)

    events = []
    for _ in range(5):
        try:
            events.append(async_to_sync(layer.receive)(channel)["event"])
        except Exception:  # noqa: BLE001 - the in-memory layer raises when empty
            break
        if events[-1]["event"] == "balance.updated":
            break
    balance = next(e for e in events if e["event"] == "balance.updated")
    assert (balance["chain"], balance["total"], balance["locked"], balance["available"]) == (
        "stellar", str(10 * XLM), str(4 * XLM), str(6 * XLM))
    assert balance["reason"] == "quote_committed" and balance["reference"] == str(quote.pk)


def test_tvl_per_chain_counts_prepaid_balances_and_customer_funds(settings):
    from settlement.selectors import tvl_by_chain
    from settlement.services.withdrawals import withdrawal_request
    from tests.books.books_kit import pay_quote

    alice, bob = Customer(), Customer()
    deposit(alice, "stellar", 100 * XLM)
    deposit(bob, "stellar", 50 * XLM)
    deposit(bob, "near", 2 * NEAR)
    quote_pay_from_balance(user=alice.user, quote_id=_quote(alice, 10 * XLM).pk)
    withdrawal_request(user=bob.user, chain="stellar", amount=5 * XLM)
    paid = _quote(alice, 7 * XLM, payment_address=settings.STELLAR_TREASURY_ADDRESS)
    assert pay_quote(alice, paid).committed  # customer funds: paid, not executed yet

    tvl = tvl_by_chain()

    assert tvl["stellar"]["XLM"] | {"display": None} == {
        "prepaid_balances": str(150 * XLM), "locked": str(10 * XLM), "withdrawing": str(5 * XLM),
        "customer_funds": str(7 * XLM), "total": str(157 * XLM), "users_with_balance": 2,
        "display": None}
    assert tvl["stellar"]["XLM"]["display"]["total"] == "157"
    assert tvl["near"]["NEAR"]["prepaid_balances"] == str(2 * NEAR)
    assert tvl["near"]["NEAR"]["users_with_balance"] == 1
