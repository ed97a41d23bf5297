"""A committed quote runs once on the LiteSVM sandbox through the production RPC path:
the recipient gets exactly the quoted amount, fee and compute units match the chain's, and
the quote, books, settlement and history say so."""

from __future__ import annotations

import pytest
from solders.keypair import Keypair
from solders.signature import Signature

from execution.models import Execution, ExecutionAttempt, ExecutionTransition
from execution.selectors import execution_summary
from execution.solana import spl
from execution.tasks import execute_quote
from quotes.models import QuoteTransition
from risk.models import AuditEvent
from settlement.ledger import account_code
from settlement.models import JournalEntry, Settlement
from tests.execution.conftest import (
    assert_books_balanced,
    chain_transaction_count,
    make_committed_quote,
    sol_quote,
    usdc_quote,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _postings(reference: str) -> dict[str, int]:
    entry = JournalEntry.objects.get(reference=reference)
    return {p.account.code: int(p.amount) for p in entry.postings.select_related("account")}


def test_sol_transfer_lands_once_with_the_chains_fee_and_compute_units(sandbox):
    amount = 12_345_678
    quote, recipient = sol_quote(sandbox, amount, cu_limit=100_000, cu_price=2_500)
    treasury_before = sandbox.balance(sandbox.treasury)
    transactions_before = chain_transaction_count(sandbox)

    result = execute_quote(str(quote.pk))

    assert result["outcome"] == "confirmed"
    assert sandbox.balance(recipient) == amount
    assert chain_transaction_count(sandbox) == transactions_before + 1
    execution = Execution.objects.get(quote=quote)
    chain_tx = sandbox.backend.transaction(Signature.from_string(execution.signature))
    assert chain_tx is not None and chain_tx.err is None
    # 5000 per signature + ceil(100_000 CU × 2_500 µlamports / 10^6) = 5000 + 250
    assert chain_tx.fee == 5_250
    assert int(execution.fee_lamports) == chain_tx.fee
    assert execution.compute_units_consumed == chain_tx.compute_units_consumed > 0
    assert int(execution.treasury_outflow_lamports) == amount
    assert sandbox.balance(sandbox.treasury) == treasury_before - amount - chain_tx.fee
    assert any(f"solpay:{execution.pk}" in line for line in chain_tx.log_messages)

    quote.refresh_from_db()
    assert quote.status == "executed" and quote.executed_at is not None
    assert execution.status == "confirmed" and execution.confirmed_at is not None
    assert list(ExecutionTransition.objects.filter(execution=execution)
                .values_list("from_status", "to_status")) == [
        ("", "pending"), ("pending", "signed"), ("signed", "submitted"), ("submitted", "confirmed")]
    attempt = ExecutionAttempt.objects.get(execution=execution)
    assert (attempt.state, attempt.send_count, attempt.signature) == ("landed", 1, execution.signature)
    assert list(QuoteTransition.objects.filter(quote=quote).values_list("to_status", flat=True)) == [
        "executing", "executed"]
    assert AuditEvent.objects.filter(entity_type="execution", entity_id=str(execution.pk),
                                     event_type="execution_confirmed").exists()

    assert _postings(f"execution:{execution.pk}") == {
        account_code("treasury", "solana", "SOL"): -(amount + 5_250),
        account_code("delivered", "solana", "SOL"): amount,
        account_code("network_fees", "solana", "SOL"): 5_250,
    }
    total = int(quote.total_cost)
    assert _postings(f"revenue:{quote.pk}") == {
        account_code("customer_funds", "stellar", "XLM"): total,
        account_code("revenue", "stellar", "XLM"): -total,
    }
    settlement = Settlement.objects.get(execution=execution)
    assert (settlement.status, int(settlement.source_amount)) == ("pending", total)
    assert settlement.transitions.count() == 1
    assert_books_balanced()

    summary = execution_summary(quote)
    assert summary["status"] == "confirmed"
    assert summary["signature"] == execution.signature
    assert summary["fee_lamports"] == "5250"
    assert summary["executed_at"] is not None


def test_spl_token_transfer_lands_once(sandbox):
    amount = 2_500_000  # 2.5 USDC
    quote, recipient_account = usdc_quote(sandbox, amount)
    treasury_usdc_before = sandbox.token_balance(sandbox.treasury_usdc_account)

    assert execute_quote(str(quote.pk))["outcome"] == "confirmed"

    assert sandbox.token_balance(recipient_account) == amount
    assert sandbox.token_balance(sandbox.treasury_usdc_account) == treasury_usdc_before - amount
    execution = Execution.objects.get(quote=quote)
    chain_tx = sandbox.backend.transaction(Signature.from_string(execution.signature))
    assert int(execution.fee_lamports) == chain_tx.fee == 5_000
    assert execution.compute_units_consumed == chain_tx.compute_units_consumed
    mint = str(sandbox.usdc_mint)
    assert _postings(f"execution:{execution.pk}") == {
        account_code("treasury", "solana", "SOL"): -5_000,
        account_code("network_fees", "solana", "SOL"): 5_000,
        account_code("treasury", "solana", mint): -amount,
        account_code("delivered", "solana", mint): amount,
    }
    assert_books_balanced()


def test_running_a_finished_quote_again_changes_nothing(sandbox):
    quote, recipient = sol_quote(sandbox, 1_000_000)
    execute_quote(str(quote.pk))
    transactions = chain_transaction_count(sandbox)

    again = execute_quote(str(quote.pk))

    assert again["outcome"] == "confirmed"
    assert chain_transaction_count(sandbox) == transactions
    assert sandbox.balance(recipient) == 1_000_000
    assert Execution.objects.filter(quote=quote).count() == 1
    assert ExecutionAttempt.objects.filter(execution__quote=quote).count() == 1


def test_a_quote_that_is_not_committed_is_not_executed(sandbox):
    quote, recipient = sol_quote(sandbox, 1_000_000)
    quote.__class__.objects.filter(pk=quote.pk).update(status="pending")

    assert execute_quote(str(quote.pk))["outcome"] == "noop"
    assert not Execution.objects.filter(quote=quote).exists()
    assert sandbox.balance(recipient) == 0


def test_two_quotes_with_identical_instructions_are_two_transactions(sandbox):
    """Same payer, recipient, amount and (likely) blockhash: only the per-execution memo
    keeps the second from being the first transaction's replay."""
    recipient = Keypair().pubkey()
    ix = spl.sol_transfer(sandbox.treasury, recipient, 2_000_000)
    first = make_committed_quote(instructions=[ix], outflow_lamports=2_000_000)
    second = make_committed_quote(instructions=[ix], outflow_lamports=2_000_000)

    assert execute_quote(str(first.pk))["outcome"] == "confirmed"
    assert execute_quote(str(second.pk))["outcome"] == "confirmed"

    signatures = {Execution.objects.get(quote=q).signature for q in (first, second)}
    assert len(signatures) == 2
    assert sandbox.balance(recipient) == 4_000_000
