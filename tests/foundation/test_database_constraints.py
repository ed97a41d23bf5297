"""Every invariant the seed schema held (and the ones we added) is enforced by PostgreSQL
itself: rows are written with raw UPDATEs/INSERTs that bypass Python validation."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import IntegrityError, InternalError, transaction
from django.utils import timezone

from execution.models import Execution
from quotes.models import Quote
from risk.audit import audit_record
from risk.models import AuditEvent, CircuitBreaker, DailySpending
from settlement.models import FundingPayment, Refund, UserBalance, Withdrawal
from tests.factories import QuoteFactory, UserFactory, WalletFactory

pytestmark = pytest.mark.django_db


def rejected(fn) -> None:
    with pytest.raises((IntegrityError, InternalError)), transaction.atomic():
        fn()


def test_quote_source_cannot_be_solana():
    quote = QuoteFactory()
    rejected(lambda: Quote.objects.filter(pk=quote.pk).update(source_chain="solana"))


def test_quote_destination_must_be_solana():
    quote = QuoteFactory()
    rejected(lambda: Quote.objects.filter(pk=quote.pk).update(destination_chain="stellar"))


def test_quote_total_must_equal_amount_plus_fee_plus_gas():
    quote = QuoteFactory()
    rejected(lambda: Quote.objects.filter(pk=quote.pk).update(total_cost=quote.total_cost + 1))


def test_quote_nonce_is_unique():
    quote = QuoteFactory()
    rejected(lambda: QuoteFactory(nonce=quote.nonce))


def test_quote_memo_is_unique_per_chain():
    quote = QuoteFactory()
    rejected(lambda: QuoteFactory(payment_memo=quote.payment_memo))


def test_quote_memo_must_be_uint64_or_hash():
    rejected(lambda: QuoteFactory(payment_memo="a-36-character-uuid-does-not-fit-here"))
    rejected(lambda: QuoteFactory(payment_memo_type="hash", payment_memo="ab" * 31))


def test_quote_compute_units_bounded():
    rejected(lambda: QuoteFactory(estimated_compute_units=1_400_001))


def test_quote_bound_must_cover_outflow_and_fee():
    rejected(lambda: QuoteFactory(max_lamports_spend=Decimal(10_004_999)))


def test_quote_negative_amounts_rejected():
    quote = QuoteFactory()
    rejected(lambda: Quote.objects.filter(pk=quote.pk).update(
        service_fee=-1, source_amount=quote.source_amount + 1))


def test_quote_status_must_be_known():
    quote = QuoteFactory()
    rejected(lambda: Quote.objects.filter(pk=quote.pk).update(status="bogus"))


def test_one_execution_per_quote():
    quote = QuoteFactory()
    Execution.objects.create(quote=quote)
    rejected(lambda: Execution.objects.create(quote=quote))


def test_confirmed_execution_requires_signature():
    execution = Execution.objects.create(quote=QuoteFactory())
    rejected(lambda: Execution.objects.filter(pk=execution.pk).update(
        status="confirmed", confirmed_at=timezone.now()))


def test_failed_execution_requires_reason():
    execution = Execution.objects.create(quote=QuoteFactory())
    rejected(lambda: Execution.objects.filter(pk=execution.pk).update(status="failed"))


def test_one_funding_payment_per_chain_tx():
    FundingPayment.objects.create(chain="stellar", tx_hash="ab" * 32, asset="XLM", amount=1,
                                  from_address="G1", to_address="G2", source="api")
    rejected(lambda: FundingPayment.objects.create(
        chain="stellar", tx_hash="ab" * 32, asset="XLM", amount=2, from_address="G1",
        to_address="G2", source="webhook"))


def test_matched_payment_needs_a_quote():
    rejected(lambda: FundingPayment.objects.create(
        chain="stellar", tx_hash="cd" * 32, asset="XLM", amount=1, from_address="G1",
        to_address="G2", source="api", status="matched"))


def test_balance_locked_cannot_exceed_amount():
    user = UserFactory()
    balance = UserBalance.objects.create(user=user, chain="stellar", asset="XLM", amount=10)
    rejected(lambda: UserBalance.objects.filter(pk=balance.pk).update(locked=11))
    rejected(lambda: UserBalance.objects.filter(pk=balance.pk).update(amount=-1))


def test_balance_unique_per_user_and_chain():
    user = UserFactory()
    UserBalance.objects.create(user=user, chain="near", asset="NEAR")
    rejected(lambda: UserBalance.objects.create(user=user, chain="near", asset="NEAR"))


def test_daily_spending_cannot_go_negative_or_duplicate():
    day = dt.date(2026, 1, 1)
    row = DailySpending.objects.create(chain="solana", day=day, amount_spent=5)
    rejected(lambda: DailySpending.objects.filter(pk=row.pk).update(amount_spent=-1))
    rejected(lambda: DailySpending.objects.create(chain="solana", day=day))


def test_wallet_address_belongs_to_one_user():
    wallet = WalletFactory()
    rejected(lambda: WalletFactory(chain=wallet.chain, address=wallet.address))


def test_refund_needs_positive_amount_and_destination():
    rejected(lambda: Refund.objects.create(reason="late", chain="stellar", asset="XLM",
                                           amount=0, destination="G1"))
    rejected(lambda: Refund.objects.create(reason="late", chain="stellar", asset="XLM",
                                           amount=1, destination=""))


def test_withdrawal_signed_requires_transaction():
    withdrawal = Withdrawal.objects.create(user=UserFactory(), chain="stellar", asset="XLM",
                                           amount=1, destination="G1")
    rejected(lambda: Withdrawal.objects.filter(pk=withdrawal.pk).update(status="signed"))


def test_circuit_breaker_is_a_single_row():
    assert CircuitBreaker.objects.filter(pk=1).exists()
    rejected(lambda: CircuitBreaker.objects.create(id=2))


def test_audit_log_is_append_only():
    event = audit_record(event_type="test", actor="pytest")
    rejected(lambda: AuditEvent.objects.filter(pk=event.pk).update(actor="someone else"))
    rejected(lambda: AuditEvent.objects.filter(pk=event.pk).delete())
