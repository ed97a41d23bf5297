"""Treasury-drain attempts stored in a quote are refused before anything is sent: the
signed bytes never leave the process, nothing changes on chain, and the user's payment is
owed back."""

from __future__ import annotations

import base64
from decimal import Decimal

import pytest
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.signature import Signature
from spl.token import instructions as token_ix
from spl.token import models as token_models
from spl.token.constants import TOKEN_PROGRAM_ID

from execution.models import Execution, ExecutionAttempt
from execution.solana import spl
from quotes.models import Quote
from risk.models import SpendReservation
from settlement.models import JournalEntry, Refund
from tests.execution.conftest import (
    assert_books_balanced,
    chain_transaction_count,
    make_committed_quote,
    sol_quote,
    usdc_quote,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _assert_refused_before_sending(sandbox, quote: Quote, reason: str, transactions_before: int):
    execution = Execution.objects.get(quote=quote)
    assert (execution.status, execution.fail_reason) == ("failed", reason)
    attempt = ExecutionAttempt.objects.get(execution=execution)
    assert attempt.send_count == 0 and attempt.last_sent_at is None
    assert attempt.state == "expired" and attempt.closed_reason.startswith("refused before sending")
    assert sandbox.backend.signature_status(Signature.from_string(attempt.signature)) is None
    assert chain_transaction_count(sandbox) == transactions_before
    quote.refresh_from_db()
    assert quote.status == "refund_due"
    assert Refund.objects.filter(quote=quote, reason="execution_failed").count() == 1
    assert not JournalEntry.objects.filter(reference=f"execution:{execution.pk}").exists()
    assert SpendReservation.objects.get(quote=quote).state == "released"
    assert_books_balanced()


def test_a_second_transfer_hidden_in_the_message_is_refused(sandbox, run_execution):
    thief = Keypair().pubkey()
    hidden = spl.sol_transfer(sandbox.treasury, thief, 5 * 10**9)
    quote, recipient = sol_quote(sandbox, 1_000_000, extra=[hidden])
    # The quote bound covers the visible 0.001 SOL only.
    assert int(quote.max_lamports_spend) == 1_000_000 + 5_000
    before = chain_transaction_count(sandbox)

    assert run_execution(quote).outcome == "failed"

    _assert_refused_before_sending(sandbox, quote, "OUTFLOW_EXCEEDS_QUOTE", before)
    assert sandbox.balance(thief) == 0 and sandbox.balance(recipient) == 0
    details = Execution.objects.get(quote=quote).transitions.get(to_status="failed").details
    assert details["lamports_spend"] == str(1_000_000 + 5 * 10**9 + 5_000)


def test_instructions_moving_more_sol_than_the_stored_bound_are_refused(sandbox, run_execution):
    fee = 5_000
    quote, recipient = sol_quote(sandbox, 2_000_000, max_lamports_spend=1_000_000 + fee)
    before = chain_transaction_count(sandbox)

    assert run_execution(quote).outcome == "failed"

    _assert_refused_before_sending(sandbox, quote, "OUTFLOW_EXCEEDS_QUOTE", before)
    assert sandbox.balance(recipient) == 0


def test_more_tokens_than_quoted_are_refused(sandbox, run_execution):
    quote, recipient_account = usdc_quote(sandbox, 5_000_000, token_bound=1_000_000)
    before = chain_transaction_count(sandbox)
    treasury_usdc = sandbox.token_balance(sandbox.treasury_usdc_account)

    assert run_execution(quote).outcome == "failed"

    _assert_refused_before_sending(sandbox, quote, "OUTFLOW_EXCEEDS_QUOTE", before)
    assert sandbox.token_balance(recipient_account) == 0
    assert sandbox.token_balance(sandbox.treasury_usdc_account) == treasury_usdc


def test_tokens_of_a_mint_the_quote_never_mentions_are_refused(sandbox, run_execution):
    quote, recipient_account = usdc_quote(sandbox, 1_000)
    Quote.objects.filter(pk=quote.pk).update(token_outflows={})
    quote.refresh_from_db()
    before = chain_transaction_count(sandbox)

    assert run_execution(quote).outcome == "failed"

    _assert_refused_before_sending(sandbox, quote, "OUTFLOW_EXCEEDS_QUOTE", before)


def test_a_delegation_of_the_treasurys_tokens_is_refused(sandbox, run_execution):
    """Approve moves nothing now (simulation shows no outflow) and drains later."""
    thief = Keypair().pubkey()
    approve = token_ix.approve(token_models.ApproveParams(
        program_id=TOKEN_PROGRAM_ID, source=sandbox.treasury_usdc_account, delegate=thief,
        owner=sandbox.treasury, amount=10**12))
    quote = make_committed_quote(instructions=[spl.sol_transfer(sandbox.treasury, thief, 1), approve],
                                 outflow_lamports=1)
    before = chain_transaction_count(sandbox)

    assert run_execution(quote).outcome == "failed"

    _assert_refused_before_sending(sandbox, quote, "PROGRAM_NOT_ALLOWED", before)


def test_a_program_outside_the_allow_list_is_refused(sandbox, run_execution):
    rogue = Instruction(Keypair().pubkey(), b"\x01",
                        [AccountMeta(sandbox.treasury, is_signer=True, is_writable=True)])
    quote = make_committed_quote(instructions=[rogue], outflow_lamports=0)
    before = chain_transaction_count(sandbox)

    assert run_execution(quote).outcome == "failed"

    _assert_refused_before_sending(sandbox, quote, "PROGRAM_NOT_ALLOWED", before)


def test_a_transaction_that_fails_in_simulation_is_never_sent(sandbox, run_execution):
    """Transfer from an account the treasury does not control: simulation fails."""
    stranger = Keypair().pubkey()
    sandbox.admin.airdrop(stranger, 10**9)
    ix = Instruction(spl.SYSTEM_PROGRAM_ID, base64.b64decode("AgAAAEBCDwAAAAAA"),
                     [AccountMeta(stranger, is_signer=False, is_writable=True),
                      AccountMeta(sandbox.treasury, is_signer=True, is_writable=True)])
    quote = make_committed_quote(instructions=[ix], outflow_lamports=0)
    before = chain_transaction_count(sandbox)

    assert run_execution(quote).outcome == "failed"

    _assert_refused_before_sending(sandbox, quote, "SIMULATION_FAILED", before)
    assert sandbox.balance(stranger) == 10**9


def test_a_treasury_that_cannot_pay_is_reported_as_insufficient_treasury(sandbox, settings, run_execution):
    # The risk limits would refuse this first; lift them to reach the chain's own answer.
    settings.PER_TRANSACTION_LIMIT_SOL = settings.SOLANA_DAILY_LIMIT = Decimal(10**9)
    settings.USER_DAILY_LIMIT_SOL = Decimal(10**9)
    quote, recipient = sol_quote(sandbox, sandbox.balance(sandbox.treasury) + 10**9)
    before = chain_transaction_count(sandbox)

    assert run_execution(quote).outcome == "failed"

    _assert_refused_before_sending(sandbox, quote, "INSUFFICIENT_TREASURY", before)
