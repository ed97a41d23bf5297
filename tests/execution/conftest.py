"""Helpers for the executor tests: committed quotes paid by a recorded Stellar payment.

The quote and its payment are background rows (the thing under test is the execution), so
they are made with the factory plus the same ledger entry the payment path books. The
chain is the session's LiteSVM sandbox server (`solana_sandbox` in tests/conftest.py),
reached through the production RPC client.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal

import pytest
from django.db import connections
from django.utils import timezone
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from execution.solana import spl
from quotes.models import Quote
from quotes.solana_tx import execution_fee_lamports, instructions_to_json
from settlement.ledger import Leg, account_code, ledger_post, unbalanced_entries
from settlement.models import FundingPayment
from tests.factories import QuoteFactory, UserFactory

CU_LIMIT = 200_000


def make_committed_quote(*, instructions: Sequence[Instruction], outflow_lamports: int,
                         token_outflows: dict[str, int] | None = None, cu_limit: int = CU_LIMIT,
                         cu_price: int = 0, max_lamports_spend: int | None = None,
                         user=None, total_cost: int = 150_225_000) -> Quote:
    """A quote in `committed`, paid in full by a matched Stellar payment (booked)."""
    fee = execution_fee_lamports(cu_limit, cu_price)
    bound = outflow_lamports + fee if max_lamports_spend is None else max_lamports_spend
    source_amount = total_cost - 150_000 - 75_000
    quote = QuoteFactory(
        user=user or UserFactory(),
        status="committed",
        committed_at=timezone.now(),
        instructions=instructions_to_json(instructions),
        estimated_compute_units=cu_limit,
        priority_fee_micro_lamports=cu_price,
        treasury_outflow_lamports=Decimal(outflow_lamports),
        fee_lamports=Decimal(fee),
        max_lamports_spend=Decimal(max(bound, outflow_lamports + fee)),
        destination_amount=Decimal(outflow_lamports + fee),
        token_outflows={m: str(a) for m, a in (token_outflows or {}).items()},
        source_amount=Decimal(source_amount),
    )
    if max_lamports_spend is not None and max_lamports_spend < outflow_lamports + fee:
        # A quote whose stored bound is below what its instructions move (a tampered row):
        # the CHECK constraint wants bound >= outflow + fee, so understate the outflow.
        Quote.objects.filter(pk=quote.pk).update(
            treasury_outflow_lamports=Decimal(max_lamports_spend - fee),
            destination_amount=Decimal(max_lamports_spend),
            max_lamports_spend=Decimal(max_lamports_spend))
        quote.refresh_from_db()
    tx_hash = uuid.uuid4().hex
    FundingPayment.objects.create(
        chain="stellar", tx_hash=tx_hash, status="matched", quote=quote, user=quote.user,
        asset="XLM", amount=quote.total_cost, from_address="GPAYER", to_address="GTREASURY",
        source="api", memo_type="id", memo=quote.payment_memo,
    )
    total = int(quote.total_cost)
    ledger_post(reference=f"payment:stellar:{tx_hash}", kind="payment_received",
                legs=[Leg(account_code("treasury", "stellar", "XLM"), "XLM", total),
                      Leg(account_code("customer_funds", "stellar", "XLM"), "XLM", -total)],
                quote_id=quote.pk, user_id=quote.user_id)
    return quote


def sol_quote(sandbox, lamports: int, *, recipient: Pubkey | None = None,
              extra: Sequence[Instruction] = (), **kwargs) -> tuple[Quote, Pubkey]:
    """A committed quote paying `lamports` from the treasury to a fresh recipient."""
    recipient = recipient or Keypair().pubkey()
    instructions = [spl.sol_transfer(sandbox.treasury, recipient, lamports), *extra]
    return make_committed_quote(instructions=instructions, outflow_lamports=lamports, **kwargs), recipient


def usdc_quote(sandbox, amount: int, *, recipient_account: Pubkey | None = None,
               token_bound: int | None = None, **kwargs) -> tuple[Quote, Pubkey]:
    """A committed quote sending `amount` USDC base units from the treasury's account to an
    existing recipient token account."""
    if recipient_account is None:
        recipient_account = sandbox.usdc_account_for(Keypair().pubkey())
    ix = spl.token_transfer_checked(source=sandbox.treasury_usdc_account, mint=sandbox.usdc_mint,
                                    destination=recipient_account, owner=sandbox.treasury,
                                    amount=amount, decimals=sandbox.usdc_decimals)
    quote = make_committed_quote(
        instructions=[ix], outflow_lamports=0,
        token_outflows={str(sandbox.usdc_mint): amount if token_bound is None else token_bound},
        **kwargs)
    return quote, recipient_account


def chain_transaction_count(sandbox) -> int:
    return int(sandbox.admin.call("getTransactionCount"))


def assert_books_balanced() -> None:
    assert unbalanced_entries() == []


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run `target` in a thread with its own DB connection; its result (or exception)
    lands in the returned list."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(target())
        except BaseException as exc:  # surfaced by the test
            out.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


@pytest.fixture
def sandbox(solana_sandbox):
    """The session sandbox, with no fault left pending before or after the test, and no
    blockhash cached from a previous test (which may have expired it on purpose)."""
    from execution.services.chain import recent_blockhash

    solana_sandbox.admin.clear_faults()
    recent_blockhash(solana_sandbox.backend, fresh=True)
    yield solana_sandbox
    solana_sandbox.admin.clear_faults()


@pytest.fixture(autouse=True)
def in_memory_channel_layer(settings):
    """Events go to an in-memory layer here. These tests run executors on several threads of
    one process, and the PostgreSQL channel layer stalls 30 s (PoolTimeout) on the first
    publish from a second thread (its pool belongs to another event loop). Delivery through
    the real layer is covered by the WebSocket tests; worker processes publish from one
    thread each."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture(params=["single", "batch"])
def run_execution(request) -> Callable[[Quote], object]:
    """Both ways a committed quote is executed: the single driver (`execution_run`, which
    recovery and leftovers use) and the batch the `execute_quote` task runs, each fault
    proven on both."""
    from execution.services.batch import execution_run_batch
    from execution.services.executor import execution_run

    entry = execution_run if request.param == "single" else execution_run_batch
    return lambda quote: entry(quote_id=quote.pk)

