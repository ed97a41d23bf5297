"""Withdrawals: paid out once, to the user's own wallet, by a real signed payment; never more
than the available balance, even when many requests race; held for an operator above the
threshold; and exactly as the chain says in live mode (fake Horizon / NEAR RPC with balances)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from stellar_sdk import Asset, TransactionBuilder
from stellar_sdk.operation import Payment

from config.errors import Forbidden, ServiceError
from settlement.chains.near import Transfer, decode_signed_transaction
from settlement.ledger import account_balance, account_code, unbalanced_entries
from settlement.models import JournalEntry, Withdrawal
from settlement.selectors import user_balance_disagreements
from settlement.services.balances import InsufficientFunds
from settlement.services.withdrawals import (
    withdrawal_approve,
    withdrawal_execute,
    withdrawal_reject,
    withdrawal_request,
    withdrawals_resume,
)
from tests.books.books_kit import (
    NEAR,
    NEAR_TREASURY,
    XLM,
    Customer,
    balance_of,
    deposit,
    ledger_of,
    run_threads,
)
from tests.books.ledger_fakes import NEAR_TX_FEE
from tests.factories import UserFactory

STELLAR_FEE = 100  # one operation at the base fee


def _books_agree() -> None:
    assert unbalanced_entries() == []
    assert user_balance_disagreements() == []


@pytest.mark.django_db
def test_withdrawal_pays_the_verified_wallet_with_a_signed_stellar_payment(settings):
    customer = Customer()
    deposit(customer, "stellar", 500 * XLM)

    withdrawal = withdrawal_request(user=customer.user, chain="stellar", amount=200 * XLM)
    assert withdrawal.status == "approved"  # 200 XLM = 20 USD, under the 1000 USD threshold
    assert balance_of(customer.user, "stellar") == (500 * XLM, 200 * XLM)
    assert ledger_of(customer.user, "XLM") == {"user_balance": 300 * XLM, "user_locked": 0,
                                               "withdrawals_payable": 200 * XLM}

    withdrawal = withdrawal_execute(withdrawal_id=withdrawal.pk)

    assert withdrawal.status == "completed" and withdrawal.completed_at is not None
    envelope = TransactionBuilder.from_xdr(withdrawal.signed_transaction,
                                           settings.STELLAR_NETWORK_PASSPHRASE)
    assert envelope.hash_hex() == withdrawal.tx_hash
    tx = envelope.transaction
    assert tx.source.account_id == settings.STELLAR_TREASURY_ADDRESS
    (op,) = tx.operations
    assert isinstance(op, Payment) and op.asset == Asset.native()
    assert op.destination.account_id == customer.stellar.public_key
    assert int(op.to_xdr_object().body.payment_op.amount.int64) == 200 * XLM
    # Signed by the treasury's own key (stellar-sdk verifies the signature over the hash).
    from stellar_sdk import Keypair

    Keypair.from_public_key(settings.STELLAR_TREASURY_ADDRESS).verify(
        envelope.hash(), envelope.signatures[0].signature)

    assert balance_of(customer.user, "stellar") == (300 * XLM, 0)
    assert ledger_of(customer.user, "XLM") == {"user_balance": 300 * XLM, "user_locked": 0,
                                               "withdrawals_payable": 0}
    # In: 500 deposited. Out: 200 paid + the fee the envelope bids (sandbox has no ledger).
    assert account_balance(account_code("treasury", "stellar", "XLM")) == 300 * XLM - STELLAR_FEE
    assert account_balance(account_code("network_fees", "stellar", "XLM")) == STELLAR_FEE
    assert int(withdrawal.network_fee) == STELLAR_FEE
    _books_agree()


@pytest.mark.django_db
def test_near_withdrawal_is_a_transfer_signed_by_the_treasury_key(settings):
    customer = Customer()
    deposit(customer, "near", 5 * NEAR)

    withdrawal = withdrawal_execute(
        withdrawal_id=withdrawal_request(user=customer.user, chain="near", amount=2 * NEAR).pk)

    assert withdrawal.status == "completed"
    signed = decode_signed_transaction(withdrawal.signed_transaction)
    assert signed.transaction.signer_id == NEAR_TREASURY
    assert signed.transaction.receiver_id == customer.near_account
    assert signed.transaction.actions == (Transfer(2 * NEAR),)
    assert signed.transaction.hash_b58 == withdrawal.tx_hash
    from nacl.signing import SigningKey

    verify_key = SigningKey(bytes.fromhex(settings.NEAR_TREASURY_KEY)).verify_key
    verify_key.verify(signed.transaction.hash, signed.signature)
    assert balance_of(customer.user, "near") == (3 * NEAR, 0)
    _books_agree()


@pytest.mark.django_db
def test_more_than_available_is_refused_and_nothing_is_written():
    customer = Customer()
    deposit(customer, "stellar", 50 * XLM)
    entries = JournalEntry.objects.count()

    with pytest.raises(InsufficientFunds) as refused:
        withdrawal_request(user=customer.user, chain="stellar", amount=50 * XLM + 1)

    assert refused.value.code == "INSUFFICIENT_FUNDS" and refused.value.status == 400
    assert Withdrawal.objects.count() == 0
    assert JournalEntry.objects.count() == entries
    assert balance_of(customer.user, "stellar") == (50 * XLM, 0)


@pytest.mark.django_db
def test_withdrawal_needs_a_verified_wallet_and_a_positive_amount():
    user = UserFactory()
    with pytest.raises(ServiceError) as no_wallet:
        withdrawal_request(user=user, chain="stellar", amount=1)
    assert no_wallet.value.code == "NO_VERIFIED_WALLET"
    customer = Customer()
    for bad in (0, -5, True, 1.5):
        with pytest.raises(ServiceError) as invalid:
            withdrawal_request(user=customer.user, chain="stellar", amount=bad)  # type: ignore[arg-type]
        assert invalid.value.code == "INVALID_REQUEST"
    with pytest.raises(ServiceError):
        withdrawal_request(user=customer.user, chain="solana", amount=1)


@pytest.mark.django_db(transaction=True)
def test_concurrent_withdrawals_cannot_overdraw():
    customer = Customer()
    deposit(customer, "stellar", 100 * XLM)

    results = run_threads([
        lambda: withdrawal_request(user=customer.user, chain="stellar", amount=60 * XLM)
        for _ in range(8)])

    granted = [r for r in results if isinstance(r, Withdrawal)]
    refused = [r for r in results if isinstance(r, InsufficientFunds)]
    assert len(granted) == 1 and len(refused) == 7, results
    assert balance_of(customer.user, "stellar") == (100 * XLM, 60 * XLM)
    assert ledger_of(customer.user, "XLM")["user_balance"] == 40 * XLM
    _books_agree()


@pytest.mark.django_db(transaction=True)
def test_concurrent_small_withdrawals_stop_exactly_at_the_balance():
    customer = Customer()
    deposit(customer, "near", 10 * NEAR)

    results = run_threads([
        lambda: withdrawal_request(user=customer.user, chain="near", amount=3 * NEAR)
        for _ in range(6)])

    assert sum(isinstance(r, Withdrawal) for r in results) == 3
    assert sum(isinstance(r, InsufficientFunds) for r in results) == 3
    assert balance_of(customer.user, "near") == (10 * NEAR, 9 * NEAR)
    # And they pay out (concurrently too) without the books ever disagreeing.
    paid = run_threads([lambda w=w: withdrawal_execute(withdrawal_id=w.pk)
                        for w in results if isinstance(w, Withdrawal)])
    assert [w.status for w in paid] == ["completed"] * 3
    assert balance_of(customer.user, "near") == (1 * NEAR, 0)
    _books_agree()


@pytest.mark.django_db(transaction=True)
def test_paying_out_twice_at_once_signs_and_books_once():
    customer = Customer()
    deposit(customer, "stellar", 100 * XLM)
    withdrawal = withdrawal_request(user=customer.user, chain="stellar", amount=40 * XLM)

    results = run_threads([lambda: withdrawal_execute(withdrawal_id=withdrawal.pk)
                           for _ in range(5)])

    assert {r.status for r in results} == {"completed"}
    assert {r.tx_hash for r in results} == {withdrawal.tx_hash or results[0].tx_hash}
    assert JournalEntry.objects.filter(reference=f"payout:withdrawal:{withdrawal.pk}").count() == 1
    assert balance_of(customer.user, "stellar") == (60 * XLM, 0)
    # A later run changes nothing.
    assert withdrawal_execute(withdrawal_id=withdrawal.pk).status == "completed"
    assert balance_of(customer.user, "stellar") == (60 * XLM, 0)
    _books_agree()


@pytest.mark.django_db
def test_same_request_key_is_one_withdrawal():
    customer = Customer()
    deposit(customer, "stellar", 100 * XLM)

    first = withdrawal_request(user=customer.user, chain="stellar", amount=30 * XLM, request_key="k1")
    again = withdrawal_request(user=customer.user, chain="stellar", amount=30 * XLM, request_key="k1")

    assert again.pk == first.pk
    assert balance_of(customer.user, "stellar") == (100 * XLM, 30 * XLM)
    with pytest.raises(ServiceError) as reused:
        withdrawal_request(user=customer.user, chain="stellar", amount=31 * XLM, request_key="k1")
    assert reused.value.code == "IDEMPOTENCY_KEY_REUSED"


@pytest.mark.django_db
def test_large_withdrawal_waits_for_an_operator_with_the_permission():
    customer = Customer()
    deposit(customer, "near", 400 * NEAR)  # 400 NEAR × 3 USD = 1200 USD > 1000 USD
    withdrawal = withdrawal_request(user=customer.user, chain="near", amount=400 * NEAR)
    assert withdrawal.status == "pending_approval"
    assert withdrawal_execute(withdrawal_id=withdrawal.pk).status == "pending_approval"

    staff_without_permission = UserFactory(is_staff=True)
    with pytest.raises(Forbidden):
        withdrawal_approve(withdrawal_id=withdrawal.pk, operator=staff_without_permission)
    with pytest.raises(Forbidden):
        withdrawal_approve(withdrawal_id=withdrawal.pk, operator=customer.user)

    operator = UserFactory(is_staff=True)
    operator.user_permissions.add(Permission.objects.get(codename="approve_withdrawal"))
    operator = type(operator).objects.get(pk=operator.pk)  # fresh permission cache
    approved = withdrawal_approve(withdrawal_id=withdrawal.pk, operator=operator)
    assert approved.status == "approved" and approved.approved_by == f"operator:{operator.username}"
    assert withdrawal_execute(withdrawal_id=withdrawal.pk).status == "completed"
    assert balance_of(customer.user, "near") == (0, 0)
    _books_agree()


@pytest.mark.django_db
def test_rejected_withdrawal_returns_the_amount():
    customer = Customer()
    deposit(customer, "near", 500 * NEAR)
    withdrawal = withdrawal_request(user=customer.user, chain="near", amount=450 * NEAR)
    operator = UserFactory(is_staff=True, is_superuser=True)

    rejected = withdrawal_reject(withdrawal_id=withdrawal.pk, operator=operator,
                                 reason="destination flagged")

    assert rejected.status == "rejected" and rejected.fail_reason == "destination flagged"
    assert balance_of(customer.user, "near") == (500 * NEAR, 0)
    assert ledger_of(customer.user, "NEAR") == {"user_balance": 500 * NEAR, "user_locked": 0,
                                                "withdrawals_payable": 0}
    _books_agree()


@pytest.mark.django_db
def test_withdrawal_above_the_per_request_limit_is_refused(settings):
    settings.WITHDRAWAL_MAX_USD = Decimal("100")
    customer = Customer()
    deposit(customer, "stellar", 2_000 * XLM)
    with pytest.raises(ServiceError) as refused:
        withdrawal_request(user=customer.user, chain="stellar", amount=1_001 * XLM)  # 100.1 USD
    assert refused.value.code == "TRANSACTION_LIMIT_EXCEEDED"
    assert Withdrawal.objects.count() == 0


# -- live mode: the payout really moves money on the (fake, stateful) chain -------------------


@pytest.mark.django_db
def test_live_stellar_payout_moves_the_money_on_horizon(horizon, settings):
    customer = Customer()
    horizon.fund(customer.stellar.public_key, 1_000 * XLM)
    deposit(customer, "stellar", 300 * XLM, horizon=horizon)
    before = horizon.balance(settings.STELLAR_TREASURY_ADDRESS)

    withdrawal = withdrawal_execute(
        withdrawal_id=withdrawal_request(user=customer.user, chain="stellar", amount=120 * XLM).pk)

    assert withdrawal.status == "completed" and int(withdrawal.network_fee) == STELLAR_FEE
    assert horizon.balance(settings.STELLAR_TREASURY_ADDRESS) == before - 120 * XLM - STELLAR_FEE
    assert horizon.record(withdrawal.tx_hash)["successful"] is True
    assert account_balance(account_code("treasury", "stellar", "XLM")) == 180 * XLM - STELLAR_FEE
    _books_agree()


@pytest.mark.django_db
def test_live_failed_payout_returns_the_amount_and_books_the_fee(horizon, settings):
    customer = Customer()
    horizon.fund(customer.stellar.public_key, 1_000 * XLM)
    deposit(customer, "stellar", 300 * XLM, horizon=horizon)
    # The user's wallet account is merged away before the payout: op_no_destination.
    del horizon.balances[customer.stellar.public_key]

    withdrawal = withdrawal_execute(
        withdrawal_id=withdrawal_request(user=customer.user, chain="stellar", amount=100 * XLM).pk)

    assert withdrawal.status == "failed" and "op_no_destination" in withdrawal.fail_reason
    assert int(withdrawal.network_fee) == STELLAR_FEE  # included in a ledger: charged
    assert balance_of(customer.user, "stellar") == (300 * XLM, 0)
    assert account_balance(account_code("treasury", "stellar", "XLM")) == 300 * XLM - STELLAR_FEE
    _books_agree()


@pytest.mark.django_db
def test_live_payout_with_a_lost_answer_is_found_by_hash_not_paid_twice(horizon, settings):
    customer = Customer()
    horizon.fund(customer.stellar.public_key, 1_000 * XLM)
    deposit(customer, "stellar", 300 * XLM, horizon=horizon)
    treasury = settings.STELLAR_TREASURY_ADDRESS
    before = horizon.balance(treasury)
    horizon.next_submit_fault = "apply_then_timeout"

    withdrawal = withdrawal_execute(
        withdrawal_id=withdrawal_request(user=customer.user, chain="stellar", amount=50 * XLM).pk)

    # Horizon applied it but the answer was lost: no verdict, funds stay reserved.
    assert withdrawal.status == "submitted"
    assert balance_of(customer.user, "stellar") == (300 * XLM, 50 * XLM)
    Withdrawal.objects.filter(pk=withdrawal.pk).update(
        updated_at=withdrawal.updated_at - dt.timedelta(minutes=5))

    assert withdrawals_resume() == {"completed": 1}

    withdrawal.refresh_from_db()
    assert withdrawal.status == "completed"
    assert horizon.balance(treasury) == before - 50 * XLM - STELLAR_FEE  # once
    assert balance_of(customer.user, "stellar") == (250 * XLM, 0)
    _books_agree()


@pytest.mark.django_db
def test_live_near_payout_is_sent_with_the_next_nonce_and_books_the_gas(near_rpc, settings):
    customer = Customer()
    near_rpc.fund(customer.near_account, 20 * NEAR)
    deposit(customer, "near", 10 * NEAR, near_rpc=near_rpc)
    before = near_rpc.balance(NEAR_TREASURY)

    withdrawal = withdrawal_execute(
        withdrawal_id=withdrawal_request(user=customer.user, chain="near", amount=4 * NEAR).pk)

    assert withdrawal.status == "completed"
    assert decode_signed_transaction(withdrawal.signed_transaction).transaction.nonce == 86
    assert int(withdrawal.network_fee) == NEAR_TX_FEE
    assert near_rpc.balance(NEAR_TREASURY) == before - 4 * NEAR - NEAR_TX_FEE
    assert near_rpc.balance(customer.near_account) == 20 * NEAR - 10 * NEAR - NEAR_TX_FEE + 4 * NEAR
    assert account_balance(account_code("treasury", "near", "NEAR")) == 6 * NEAR - NEAR_TX_FEE
    _books_agree()


@pytest.mark.django_db
def test_open_circuit_breaker_holds_new_payouts_until_reset():
    from risk.services import breaker_reset, breaker_trip

    customer = Customer()
    deposit(customer, "stellar", 100 * XLM)
    breaker_trip(trigger="reconciliation_mismatch", reason="books differ from the chain",
                 actor="system:reconciliation_mismatch")
    withdrawal = withdrawal_request(user=customer.user, chain="stellar", amount=10 * XLM)

    held = withdrawal_execute(withdrawal_id=withdrawal.pk)

    assert held.status == "approved" and held.tx_hash is None  # nothing signed, nothing sent
    assert balance_of(customer.user, "stellar") == (100 * XLM, 10 * XLM)
    operator = UserFactory(is_staff=True, is_superuser=True)
    breaker_reset(actor_user=operator, reason="reviewed")
    Withdrawal.objects.filter(pk=withdrawal.pk).update(
        updated_at=held.updated_at - dt.timedelta(minutes=5))
    assert withdrawals_resume() == {"completed": 1}
    assert balance_of(customer.user, "stellar") == (90 * XLM, 0)
