"""The invariant checks themselves catch what they promise to: a chaos test that passes
because its checker cannot fail would prove nothing. Each broken state below is written on
purpose (a double spend really lands twice on the sandbox chain)."""

from __future__ import annotations

import uuid

import pytest
from django.utils import timezone
from solders.keypair import Keypair

from execution.models import Execution, ExecutionAttempt
from execution.solana import spl
from settlement.ledger import Leg, account_code, ledger_post
from settlement.models import FundingPayment
from tests.chaos.invariants import invariant_report
from tests.factories import QuoteFactory

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]


def _land_transfer(chain, treasury: Keypair, recipient, note: str):
    blockhash, last_valid = chain.backend.latest_blockhash()
    tx = spl.build_transaction(treasury, [spl.sol_transfer(treasury.pubkey(), recipient, 1_000_000),
                                          spl.memo(note)], blockhash)
    spl.send_and_confirm(chain.backend, tx, last_valid)
    return tx, last_valid


def test_a_double_spend_and_broken_books_are_all_reported(chain, settings):
    clean = invariant_report(reconcile=False)
    assert clean["ok"], clean["problems"]

    treasury = Keypair.from_base58_string(settings.SOLANA_TREASURY_KEY)
    recipient = Keypair().pubkey()
    quote = QuoteFactory(status="executed")  # no history, no revenue, paid by an unbooked payment
    execution = Execution.objects.create(quote=quote, status="confirmed", attempt_count=2,
                                         confirmed_at=timezone.now(), signature="x")
    for number in (1, 2):  # two attempts of ONE execution, both on chain: a double spend
        tx, last_valid = _land_transfer(chain, treasury, recipient, f"attempt {number} of {execution.pk}")
        ExecutionAttempt.objects.create(execution=execution, number=number, signature=str(tx.signatures[0]),
                                        signed_transaction=bytes(tx), state="landed",
                                        blockhash=str(tx.message.recent_blockhash),
                                        last_valid_block_height=last_valid)
    Execution.objects.filter(pk=execution.pk).update(signature=str(tx.signatures[0]))
    FundingPayment.objects.create(chain="stellar", tx_hash=uuid.uuid4().hex, status="matched",
                                  quote=quote, user=quote.user, asset="XLM", amount=quote.total_cost,
                                  from_address="GPAYER", to_address="GTREASURY", source="api")
    ledger_post(reference=f"chaos:wrong-side:{uuid.uuid4().hex}", kind="test",
                legs=[Leg(account_code("treasury", "solana", "SOL"), "SOL", -7),
                      Leg(account_code("revenue", "solana", "SOL"), "SOL", 7)])

    report = invariant_report()

    assert not report["ok"]
    problems = report["problems"]
    assert any("2 attempts recorded as landed" in p for p in problems["executions_once"]), problems
    assert any("2 of its attempts are on chain" in p for p in problems["executions_once"]), problems
    assert any("history ends at pending" in p for p in problems["quote_histories"]), problems
    assert any("no revenue entry" in p for p in problems["quote_histories"]), problems
    assert any("has no ledger entry" in p for p in problems["payments_booked"]), problems
    assert any("treasury:solana:SOL" in p and "negative" in p for p in problems["no_negative_balances"])
    assert any("revenue:solana:SOL" in p and "debit side" in p for p in problems["no_negative_balances"])
    assert problems["reconciliation"], "reconciliation found nothing wrong"
