"""The RPC path under injected faults (the sandbox server misbehaving on the wire, as real
nodes do): every quote still lands exactly once, or fails without spending, and a program
error read from the status is a failure with its fee booked and the payment owed back."""

from __future__ import annotations

import pytest
from solders.signature import Signature
from solders.token.state import TokenAccount, TokenAccountState

from execution.models import Execution, ExecutionAttempt
from execution.solana import spl
from quotes.models import Quote
from settlement.ledger import account_code
from settlement.models import JournalEntry, Refund
from tests.execution.conftest import (
    assert_books_balanced,
    chain_transaction_count,
    in_thread,
    make_committed_quote,
    sol_quote,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_dropped_send_is_resent_with_the_same_bytes_and_lands_once(sandbox, settings, run_execution):
    settings.EXECUTION_RESEND_INTERVAL_SECONDS = 0.2
    quote, recipient = sol_quote(sandbox, 3_000_000)
    before = chain_transaction_count(sandbox)
    sandbox.admin.inject_faults(drop_sends=1)

    assert run_execution(quote).outcome == "confirmed"

    attempt = ExecutionAttempt.objects.get(execution__quote=quote)
    assert attempt.send_count >= 2 and attempt.number == 1
    assert sandbox.balance(recipient) == 3_000_000
    assert chain_transaction_count(sandbox) == before + 1


def test_a_lost_send_response_is_resolved_by_the_signature_status(sandbox, run_execution):
    quote, recipient = sol_quote(sandbox, 4_000_000)
    before = chain_transaction_count(sandbox)
    sandbox.admin.inject_faults(lose_send_responses=1)

    assert run_execution(quote).outcome == "confirmed"

    attempt = ExecutionAttempt.objects.get(execution__quote=quote)
    assert (attempt.send_count, attempt.state) == (1, "landed")
    assert sandbox.balance(recipient) == 4_000_000
    assert chain_transaction_count(sandbox) == before + 1


def test_a_lost_send_response_as_http_503_is_resolved_the_same_way(sandbox, run_execution):
    quote, recipient = sol_quote(sandbox, 4_100_000)
    sandbox.admin.inject_faults(lose_send_responses=1, lost_response_mode="503")

    assert run_execution(quote).outcome == "confirmed"
    assert sandbox.balance(recipient) == 4_100_000


def test_a_delayed_status_with_resends_still_lands_once(sandbox, settings, run_execution):
    settings.EXECUTION_RESEND_INTERVAL_SECONDS = 0.0
    # A batch never re-sends: what has not landed when its short wait ends goes to the
    # single driver, which does. No wait at all here, so the lag is the driver's to ride out.
    settings.EXECUTION_BATCH_CONFIRM_SECONDS = 0.0
    quote, recipient = sol_quote(sandbox, 5_000_000)
    before = chain_transaction_count(sandbox)
    sandbox.admin.inject_faults(null_statuses=4)

    assert run_execution(quote).outcome == "confirmed"

    attempt = ExecutionAttempt.objects.get(execution__quote=quote)
    assert attempt.send_count >= 2  # the same bytes went out again while the status lagged
    assert sandbox.balance(recipient) == 5_000_000
    assert chain_transaction_count(sandbox) == before + 1


def test_an_unavailable_node_is_waited_out(sandbox, run_execution):
    quote, recipient = sol_quote(sandbox, 5_100_000)
    sandbox.admin.inject_faults(unavailable=3)

    assert run_execution(quote).outcome == "confirmed"
    assert sandbox.balance(recipient) == 5_100_000


def test_an_expired_blockhash_with_no_status_allows_one_new_attempt(sandbox, settings, run_execution):
    settings.EXECUTION_RESEND_INTERVAL_SECONDS = 3600  # never re-send: let the hash expire
    quote, recipient = sol_quote(sandbox, 6_000_000)
    before = chain_transaction_count(sandbox)
    sandbox.admin.inject_faults(drop_sends=1)

    thread, out = in_thread(lambda: run_execution(quote))
    wait_for(lambda: Execution.objects.filter(quote=quote, status="submitted").exists())
    first = ExecutionAttempt.objects.get(execution__quote=quote, number=1)
    assert sandbox.balance(recipient) == 0
    sandbox.admin.expire_blockhash()
    thread.join(30)

    assert out[0].outcome == "confirmed"
    attempts = list(ExecutionAttempt.objects.filter(execution__quote=quote).order_by("number"))
    assert [(a.number, a.state) for a in attempts] == [(1, "expired"), (2, "landed")]
    assert "no status" in attempts[0].closed_reason
    assert sandbox.backend.signature_status(Signature.from_string(first.signature)) is None
    # The dead bytes cannot land any more: re-sending them changes nothing.
    sandbox.backend.send_raw(bytes(first.signed_transaction))
    assert sandbox.backend.signature_status(Signature.from_string(first.signature)) is None
    assert sandbox.balance(recipient) == 6_000_000
    assert chain_transaction_count(sandbox) == before + 1
    execution = Execution.objects.get(quote=quote)
    assert execution.signature == attempts[1].signature and execution.attempt_count == 2


def test_attempts_that_keep_expiring_end_in_blockhash_expired_and_a_refund(sandbox, settings, run_execution):
    settings.EXECUTION_RESEND_INTERVAL_SECONDS = 3600
    settings.EXECUTION_MAX_ATTEMPTS = 2
    quote, recipient = sol_quote(sandbox, 6_100_000)
    sandbox.admin.inject_faults(drop_sends=2)

    thread, out = in_thread(lambda: run_execution(quote))
    for number in (1, 2):
        wait_for(lambda n=number: ExecutionAttempt.objects.filter(
            execution__quote=quote, number=n, send_count__gte=1).exists())
        sandbox.admin.expire_blockhash()
    thread.join(30)

    assert out[0].outcome == "failed"
    execution = Execution.objects.get(quote=quote)
    assert execution.fail_reason == "BLOCKHASH_EXPIRED"
    assert sandbox.balance(recipient) == 0
    quote.refresh_from_db()
    assert quote.status == "refund_due"
    refund = Refund.objects.get(quote=quote)
    assert (refund.reason, int(refund.amount), refund.destination) == (
        "execution_failed", int(quote.total_cost), quote.refund_to)
    assert not JournalEntry.objects.filter(reference=f"execution:{execution.pk}").exists()
    assert_books_balanced()


def test_an_error_in_the_signature_status_fails_the_quote_and_books_the_fee(sandbox, settings, run_execution):
    """Simulation passes, then the treasury's tokens are gone before the (re)send lands: the
    transaction lands with `err`. The fee was charged; the payment is owed back."""
    settings.EXECUTION_RESEND_INTERVAL_SECONDS = 0.5
    mint = sandbox.admin.create_mint(sandbox.mint_authority.pubkey(), decimals=6)
    treasury_account = sandbox.admin.mint_to(mint, sandbox.treasury, 1_000)
    recipient_account = spl.create_ata(sandbox.backend, sandbox.mint_authority,
                                       owner=sandbox.mint_authority.pubkey(), mint=mint)
    ix = spl.token_transfer_checked(source=treasury_account, mint=mint,
                                    destination=recipient_account, owner=sandbox.treasury,
                                    amount=1_000, decimals=6)
    quote = make_committed_quote(instructions=[ix], outflow_lamports=0,
                                 token_outflows={str(mint): 1_000})
    sandbox.admin.inject_faults(drop_sends=1)

    thread, out = in_thread(lambda: run_execution(quote))
    wait_for(lambda: Execution.objects.filter(quote=quote, status="submitted").exists())
    account = sandbox.backend.account(treasury_account)
    emptied = TokenAccount(mint, sandbox.treasury, 0, None, TokenAccountState.Initialized, None, 0)
    sandbox.admin.set_account(treasury_account, lamports=account.lamports, data=bytes(emptied),
                              owner=account.owner)
    thread.join(30)

    assert out[0].outcome == "failed"
    execution = Execution.objects.get(quote=quote)
    assert execution.fail_reason == "PROGRAM_ERROR"
    assert "InstructionError" in execution.error_message
    chain_tx = sandbox.backend.transaction(Signature.from_string(execution.signature))
    assert chain_tx.err is not None
    assert int(execution.fee_lamports) == chain_tx.fee == 5_000
    assert int(execution.treasury_outflow_lamports) == 0
    assert sandbox.token_balance(recipient_account) == 0
    entry = JournalEntry.objects.get(reference=f"execution:{execution.pk}")
    assert {p.account.code: int(p.amount) for p in entry.postings.all()} == {
        account_code("treasury", "solana", "SOL"): -5_000,
        account_code("network_fees", "solana", "SOL"): 5_000,
    }
    quote = Quote.objects.get(pk=quote.pk)
    assert quote.status == "refund_due"
    assert Refund.objects.filter(quote=quote, reason="execution_failed").count() == 1
    assert JournalEntry.objects.filter(reference=f"refund:execution:{quote.pk}").exists()
    assert_books_balanced()
