"""The batch: one `execute_quote` task takes the other committed quotes waiting along, walks
them through the same states as the single driver, one transaction per step for all, and
gets exactly the answers the single driver would have given each of them."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from solders.keypair import Keypair
from solders.transaction import VersionedTransaction

from execution.models import Execution, ExecutionAttempt, ExecutionTransition
from execution.services.chain import recent_blockhash, treasury_signer
from execution.services.guard import outflow_guard_check, outflow_guard_check_many
from execution.solana import spl
from execution.tasks import execute_quote
from quotes.models import Quote, QuoteTransition
from quotes.solana_tx import build_execution_message
from risk.models import AuditEvent, SpendReservation, TreasuryOutflow
from settlement.models import JournalEntry, Refund, Settlement
from tests.execution.conftest import (
    assert_books_balanced,
    chain_transaction_count,
    sol_quote,
    usdc_quote,
)
from tests.factories import UserFactory
from tests.funding.kit import run_queued

pytestmark = pytest.mark.django_db(transaction=True)


def _committed_in_order(quotes: list[Quote]) -> None:
    """Distinct commit times, oldest first: the order a batch admits them in."""
    start = timezone.now() - dt.timedelta(seconds=60)
    for n, quote in enumerate(quotes):
        Quote.objects.filter(pk=quote.pk).update(committed_at=start + dt.timedelta(seconds=n))


def test_one_task_executes_every_waiting_quote_once_with_full_books(sandbox):
    sols = [sol_quote(sandbox, 2_000_000 + n) for n in range(10)]
    usdc, usdc_recipient = usdc_quote(sandbox, 1_500_000)
    quotes = [q for q, _ in sols] + [usdc]
    before = chain_transaction_count(sandbox)
    treasury_usdc = sandbox.token_balance(sandbox.treasury_usdc_account)

    with CaptureQueriesContext(connection) as queries:
        result = execute_quote(str(quotes[3].pk))

    assert result["outcome"] == "confirmed"
    assert chain_transaction_count(sandbox) == before + len(quotes)
    assert [sandbox.balance(r) for _, r in sols] == [2_000_000 + n for n in range(10)]
    assert sandbox.token_balance(usdc_recipient) == 1_500_000
    assert sandbox.token_balance(sandbox.treasury_usdc_account) == treasury_usdc - 1_500_000
    for quote in quotes:
        quote.refresh_from_db()
        execution = Execution.objects.get(quote=quote)
        assert (quote.status, execution.status) == ("executed", "confirmed")
        assert quote.executed_at is not None and execution.confirmed_at is not None
        assert int(execution.fee_lamports) == 5_000 and execution.compute_units_consumed > 0
        attempt = ExecutionAttempt.objects.get(execution=execution)
        assert (attempt.state, attempt.send_count, attempt.signature) == (
            "landed", 1, execution.signature)
        assert list(execution.transitions.order_by("id").values_list("to_status", flat=True)) == [
            "pending", "signed", "submitted", "confirmed"]
        assert list(QuoteTransition.objects.filter(quote=quote).order_by("id")
                    .values_list("to_status", flat=True))[-2:] == ["executing", "executed"]
        assert JournalEntry.objects.filter(reference=f"execution:{execution.pk}").count() == 1
        assert JournalEntry.objects.filter(reference=f"revenue:{quote.pk}").count() == 1
        assert Settlement.objects.get(execution=execution).funding_payment.quote_id == quote.pk
        assert SpendReservation.objects.get(quote=quote).state == "consumed"
        assert AuditEvent.objects.filter(entity_id=str(execution.pk),
                                         event_type="execution_confirmed").count() == 1
    assert TreasuryOutflow.objects.count() == len(quotes)
    assert int(Execution.objects.get(quote=usdc).treasury_outflow_lamports) == 0
    assert_books_balanced()
    # The point of the batch: a tenth of the single driver's ~85 statements per execution,
    # the first use of this database's ledger accounts included.
    assert len(queries) <= 9 * len(quotes), len(queries)


def test_a_batch_gives_each_quote_the_answer_it_would_get_alone(sandbox, settings):
    """A user daily limit that admits three of five, a drain attempt, and fine quotes,
    all in one batch: the limit admits the oldest three, the drain is refused before
    sending, everything else lands."""
    settings.USER_DAILY_LIMIT_SOL = Decimal("0.0035")  # 3 × (0.001 SOL + 5,000 fee) fit
    capped = UserFactory()
    limited = [sol_quote(sandbox, 1_000_000, user=capped) for _ in range(5)]
    thief = Keypair().pubkey()
    drain, _ = sol_quote(sandbox, 1_000_000, extra=[spl.sol_transfer(sandbox.treasury, thief, 10**9)])
    fine = [sol_quote(sandbox, 3_000_000) for _ in range(3)]
    _committed_in_order([q for q, _ in limited] + [drain] + [q for q, _ in fine])
    before = chain_transaction_count(sandbox)

    execute_quote(str(fine[0][0].pk))
    # The drain left the batch at the guard and was queued for the single driver: run that
    # task as a worker would.
    assert [r["outcome"] for r in run_queued("execution.tasks.execute_quote")] == ["failed"]

    statuses = [Quote.objects.get(pk=q.pk).status for q, _ in limited]
    assert statuses == ["executed"] * 3 + ["refund_due"] * 2
    for quote, _ in limited[3:]:
        assert Execution.objects.get(quote=quote).fail_reason == "RISK_REJECTED"
        assert Refund.objects.filter(quote=quote, reason="execution_failed").count() == 1
        assert not ExecutionAttempt.objects.filter(execution__quote=quote).exists()
    drained = Execution.objects.get(quote=drain)
    assert (drained.status, drained.fail_reason) == ("failed", "OUTFLOW_EXCEEDS_QUOTE")
    assert ExecutionAttempt.objects.get(execution=drained).send_count == 0
    assert sandbox.balance(thief) == 0
    assert [sandbox.balance(r) for _, r in fine] == [3_000_000] * 3
    assert chain_transaction_count(sandbox) == before + 3 + 3
    assert SpendReservation.objects.filter(quote__user=capped, state="consumed").count() == 3
    assert_books_balanced()


def test_the_batch_guard_judges_exactly_as_the_single_guard(sandbox):
    thief = Keypair().pubkey()
    quotes = [
        sol_quote(sandbox, 1_000_000)[0],  # fine
        sol_quote(sandbox, 1_000_000, extra=[spl.sol_transfer(sandbox.treasury, thief, 10**9)])[0],
        sol_quote(sandbox, 2_000_000, max_lamports_spend=1_005_000)[0],  # bound below outflow
        usdc_quote(sandbox, 5_000)[0],  # fine
        usdc_quote(sandbox, 5_000_000, token_bound=1_000)[0],  # more tokens than quoted
        sol_quote(sandbox, sandbox.balance(sandbox.treasury) + 1)[0],  # treasury cannot pay
    ]
    signer = treasury_signer()
    blockhash, _ = recent_blockhash(sandbox.backend)
    items: list[tuple[VersionedTransaction, Quote]] = []
    for n, quote in enumerate(quotes):
        message = build_execution_message(quote.instructions, int(quote.estimated_compute_units),
                                          int(quote.priority_fee_micro_lamports),
                                          f"guard-test:{n}", signer.pubkey, blockhash)
        items.append((signer.sign_transaction(message), quote))

    together = outflow_guard_check_many(backend=sandbox.backend, items=items,
                                        treasury=signer.pubkey)
    alone = [outflow_guard_check(backend=sandbox.backend, tx=tx, quote=quote,
                                 treasury=signer.pubkey) for tx, quote in items]

    assert [(v.outcome, v.fail_reason, v.lamports_spend, v.token_spend) for v in together] == [
        (v.outcome, v.fail_reason, v.lamports_spend, v.token_spend) for v in alone]
    assert [v.outcome for v in alone] == ["ok", "refused", "refused", "ok", "refused", "refused"]
    assert alone[5].fail_reason == "INSUFFICIENT_TREASURY"


def test_an_execution_that_moves_on_under_someone_else_mid_batch_is_left_to_the_driver(
        sandbox, monkeypatch):
    """Between two steps another hand moves one batch member on (here: marks it submitted,
    as a driver would). Each step re-locks its members and reads their state back: the
    batch neither sends nor records it, the single driver finishes it, and it lands once."""
    from execution.services import batch as batch_module

    sols = [sol_quote(sandbox, 2_100_000 + n) for n in range(3)]
    moved_quote = sols[1][0]
    before = chain_transaction_count(sandbox)
    real_guard = batch_module.outflow_guard_check_many

    def guard_while_someone_moves_one(**kwargs):
        Execution.objects.filter(quote=moved_quote).update(status="submitted")
        return real_guard(**kwargs)

    monkeypatch.setattr(batch_module, "outflow_guard_check_many", guard_while_someone_moves_one)

    assert execute_quote(str(sols[0][0].pk))["outcome"] == "confirmed"
    monkeypatch.setattr(batch_module, "outflow_guard_check_many", real_guard)
    # The batch handed the moved one to the single driver: run that task as a worker would.
    assert [r["outcome"] for r in run_queued("execution.tasks.execute_quote")] == ["confirmed"]

    assert [sandbox.balance(r) for _, r in sols] == [2_100_000 + n for n in range(3)]
    assert chain_transaction_count(sandbox) == before + 3
    moved = Execution.objects.get(quote=moved_quote)
    assert ExecutionTransition.objects.filter(execution=moved, to_status="confirmed").count() == 1
    assert list(ExecutionAttempt.objects.filter(execution=moved).values_list("state", flat=True)) == [
        "landed"]
    assert all(Quote.objects.get(pk=q.pk).status == "executed" for q, _ in sols)
    assert_books_balanced()


def test_amounts_beyond_32_bits_go_through_the_prepared_batch_steps(sandbox):
    """The batch's steps run prepared, values bound server-side, where Django sends a bare
    int in an expression as int4: lamports and stroops above 2**31 must still count."""
    from risk.models import DailySpending, UserDailySpending

    big = [sol_quote(sandbox, 3_000_000_000 + n) for n in range(2)]
    small, small_recipient = sol_quote(sandbox, 1_000_000)

    assert execute_quote(str(big[0][0].pk))["outcome"] == "confirmed"

    assert [sandbox.balance(r) for _, r in big] == [3_000_000_000, 3_000_000_001]
    assert sandbox.balance(small_recipient) == 1_000_000
    quotes = [q for q, _ in big] + [small]
    assert all(Quote.objects.get(pk=q.pk).status == "executed" for q in quotes)
    solana_spent = sum(int(q.max_lamports_spend) for q in quotes)
    assert int(DailySpending.objects.get(chain="solana").amount_spent) == solana_spent
    assert sum(int(row.amount_spent) for row in UserDailySpending.objects.all()) == solana_spent
    assert_books_balanced()


def test_a_quote_that_does_not_land_in_the_batch_window_is_finished_by_the_driver(sandbox, settings):
    settings.EXECUTION_BATCH_CONFIRM_SECONDS = 0.0
    settings.EXECUTION_RESEND_INTERVAL_SECONDS = 0.1
    quote, recipient = sol_quote(sandbox, 4_400_000)
    before = chain_transaction_count(sandbox)
    sandbox.admin.inject_faults(drop_sends=1)

    assert execute_quote(str(quote.pk))["outcome"] == "confirmed"

    execution = Execution.objects.get(quote=quote)
    attempt = ExecutionAttempt.objects.get(execution=execution)
    assert attempt.send_count >= 2 and attempt.state == "landed"
    assert sandbox.balance(recipient) == 4_400_000
    assert chain_transaction_count(sandbox) == before + 1
    assert ExecutionTransition.objects.filter(execution=execution, to_status="confirmed").count() == 1
    assert_books_balanced()


def test_a_delivery_for_a_quote_in_someone_elses_batch_answers_busy_without_waiting(sandbox):
    """Under load most deliveries find their quote inside another worker's batch, which
    holds the execution's lease and, during each step, the quote's row lock: the delivery
    answers "busy" at once instead of queueing behind that lock."""
    import threading
    import time

    from django.db import connections, transaction

    from execution.services.executor import _lease_key
    from tests.admin.admin_kit import start_execution

    quote, _ = sol_quote(sandbox, 2_000_000)
    execution = start_execution(quote, to="pending")
    holding, release = threading.Event(), threading.Event()

    def batch_step_in_another_worker() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_lock(%s)", [_lease_key(execution.pk)])
                cursor.execute("SELECT 1 FROM quotes_quote WHERE id = %s FOR UPDATE", [quote.pk])
                holding.set()
                release.wait(10)
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock_all()")
        finally:
            connections.close_all()

    owner = threading.Thread(target=batch_step_in_another_worker)
    owner.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        result = execute_quote(str(quote.pk))
        waited = time.monotonic() - started
    finally:
        release.set()
        owner.join()
    assert (result["outcome"], result["execution_id"]) == ("busy", str(execution.pk))
    assert waited < 2.0, waited  # the row lock is held until `release` (10 s)
    assert Execution.objects.get(pk=execution.pk).status == "pending"  # nothing was done
