"""Refund payouts: an approved refund is paid once by a real signed payment to its
destination, through the refund's own states (approved → sent → completed), its network fee
booked; a failed quote's own refund ends the quote as `refunded`."""

from __future__ import annotations

import pytest
from stellar_sdk import TransactionBuilder

from config.errors import Conflict
from quotes.services.transitions import quote_transition
from settlement.ledger import account_balance, account_code, unbalanced_entries
from settlement.models import JournalEntry, Refund
from settlement.services.refund_payouts import refund_pay_out
from settlement.services.refunds import refund_create, refund_mark
from tests.books.books_kit import NEAR, XLM, Customer, pay, pay_quote
from tests.books.ledger_fakes import NEAR_TX_FEE
from tests.factories import QuoteFactory

pytestmark = pytest.mark.django_db


def _underpaid_refund(customer: Customer, settings, **chains) -> Refund:
    quote = QuoteFactory(user=customer.user, payment_address=settings.STELLAR_TREASURY_ADDRESS,
                         refund_to=customer.stellar.public_key)
    outcome = pay_quote(customer, quote, amount=int(quote.total_cost) - 1, **chains)
    assert outcome.status == "underpaid"
    return outcome.refund


def test_approved_refund_is_paid_once_with_a_signed_payment_and_its_fee_booked(settings):
    customer = Customer()
    refund = _underpaid_refund(customer, settings)
    with pytest.raises(Conflict):
        refund_pay_out(refund_id=refund.pk, actor="operator:ann")  # not approved yet
    refund_mark(refund_id=refund.pk, to_status="approved", actor="operator:ann")

    paid = refund_pay_out(refund_id=refund.pk, actor="operator:ann")
    again = refund_pay_out(refund_id=refund.pk, actor="operator:ann")

    assert paid.status == again.status == "completed"
    envelope = TransactionBuilder.from_xdr(paid.signed_transaction, settings.STELLAR_NETWORK_PASSPHRASE)
    assert envelope.hash_hex() == paid.tx_hash
    assert envelope.transaction.operations[0].destination.account_id == customer.stellar.public_key
    assert account_balance(account_code("refunds_payable", "stellar", "XLM")) == 0
    # Received the underpayment, paid it all back, and paid the payout's 100-stroop fee.
    assert account_balance(account_code("treasury", "stellar", "XLM")) == -100
    assert JournalEntry.objects.filter(reference=f"refund_fee:{refund.pk}").count() == 1
    assert unbalanced_entries() == []


def test_live_refund_moves_the_money_on_horizon(horizon, settings):
    customer = Customer()
    horizon.fund(customer.stellar.public_key, 1_000 * XLM)
    refund = _underpaid_refund(customer, settings, horizon=horizon)
    refund_mark(refund_id=refund.pk, to_status="approved", actor="operator:ann")
    payer_before = horizon.balance(customer.stellar.public_key)

    paid = refund_pay_out(refund_id=refund.pk, actor="operator:ann")

    assert paid.status == "completed"
    assert horizon.record(paid.tx_hash)["successful"] is True
    assert horizon.balance(customer.stellar.public_key) == payer_before + int(refund.amount)
    assert account_balance(account_code("treasury", "stellar", "XLM")) == \
        horizon.balance(settings.STELLAR_TREASURY_ADDRESS) - 1_000 * XLM


def test_failed_quotes_refund_ends_the_quote_refunded(near_rpc, settings):
    from django.db import transaction

    customer = Customer()
    near_rpc.fund(customer.near_account, 10 * NEAR)
    quote = QuoteFactory(user=customer.user, source_chain="near", source_asset="NEAR",
                         source_amount=NEAR, service_fee=10**21, gas_estimate=10**21,
                         total_cost=NEAR + 2 * 10**21, payment_address=settings.NEAR_PAYMENT_ACCOUNT,
                         refund_to=customer.near_account)
    outcome = pay("near", customer.near_payment(int(quote.total_cost), quote_id=str(quote.pk)),
                  near_rpc=near_rpc)
    assert outcome.committed
    with transaction.atomic():  # what the executor's failure path records
        for status in ("failed", "refund_due"):
            quote_transition(quote_id=quote.pk, to_status=status, actor="test:executor")
        refund = refund_create(reason="execution_failed", payment=outcome.payment, quote=quote,
                               amount=int(quote.total_cost), destination=customer.near_account)
    refund_mark(refund_id=refund.pk, to_status="approved", actor="operator:ann")

    paid = refund_pay_out(refund_id=refund.pk, actor="operator:ann")

    assert paid.status == "completed"
    quote.refresh_from_db()
    assert quote.status == "refunded"
    # The whole payment came back; the customer paid only its own transaction's gas.
    assert near_rpc.balance(customer.near_account) == 10 * NEAR - NEAR_TX_FEE
