"""A quote paid from the prepaid balance, executed by the real executor on the sandbox: on
success the locked funds are earned (debited once, never from customer funds); on failure
they are unlocked and the quote ends `refunded` (the executor calls `balance_settle_quote` /
`balance_release_quote` from execution/services/outcomes.py)."""

from __future__ import annotations

import pytest
from solders.keypair import Keypair

from execution.solana.spl import TOKEN_ACCOUNT_SIZE, TOKEN_PROGRAM_ID
from execution.tasks import execute_quote
from settlement.ledger import account_balance, account_code
from settlement.models import JournalEntry
from settlement.services.balances import quote_pay_from_balance
from settlement.services.reconciliation import reconcile_run
from tests.books.books_kit import (
    XLM,
    Customer,
    balance_of,
    deposit,
    new_quote,
    sol_transfer_work,
    usdc_transfer_work,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_balance_funded_quote_executes_and_is_debited_once(opened_books):
    customer = Customer()
    deposit(customer, "stellar", 1_000 * XLM)
    quote = new_quote(customer, "stellar", sol_transfer_work(Keypair().pubkey(), 3_000_000))
    quote_pay_from_balance(user=customer.user, quote_id=quote.pk)

    assert execute_quote(str(quote.pk))["outcome"] == "confirmed"

    total = int(quote.total_cost)
    assert balance_of(customer.user, "stellar") == (1_000 * XLM - total, 0)
    assert JournalEntry.objects.get(reference=f"revenue:{quote.pk}").kind == "balance_settle"
    assert account_balance(account_code("customer_funds", "stellar", "XLM")) == 0
    assert reconcile_run(triggered_by="test").outcome == "ok"


def test_balance_funded_quote_that_fails_is_unlocked_and_refunded(opened_books):
    customer = Customer()
    deposit(customer, "stellar", 1_000 * XLM)
    recipient = opened_books.usdc_account_for(Keypair().pubkey())
    quote = new_quote(customer, "stellar", usdc_transfer_work(opened_books, recipient, 5 * 10**6))
    quote_pay_from_balance(user=customer.user, quote_id=quote.pk)
    opened_books.admin.set_account(recipient, lamports=2_039_280, data=bytes(TOKEN_ACCOUNT_SIZE),
                                   owner=TOKEN_PROGRAM_ID)

    assert execute_quote(str(quote.pk))["outcome"] == "failed"

    quote.refresh_from_db()
    assert quote.status == "refunded"
    assert balance_of(customer.user, "stellar") == (1_000 * XLM, 0)
    assert reconcile_run(triggered_by="test").outcome == "ok"
