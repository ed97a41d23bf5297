"""The worker SIGKILLed at random points while it executes paid quotes.

40 quotes are created and paid over real HTTP (daphne); each payment commits its quote and
enqueues its execution (the executor takes waiting quotes along in small batches). The
whole django-q2 cluster (every process of it) is then killed
with SIGKILL every 0.5-1.5 s, several times, and started again; the Solana RPC answers a
little slowly so executions are caught between signing, sending and confirming. Then the
periodic jobs (recovery of stuck executions, re-enqueue of lost tasks) are fired and the
worker finishes. Whatever the kills interrupted, every quote must execute exactly once:
each recipient holds exactly its amount, the chain holds exactly one transaction per quote,
no execution has two attempts on chain, the ledger balances and reconciliation is clean.
Set CHAOS_SEED to replay a run's kill timings.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from execution.models import Execution, ExecutionAttempt, ExecutionTransition
from tests.chaos.conftest import chain_transaction_count
from tests.chaos.harness import ChaosStack, Customer, stack_env, wait_until
from tests.chaos.invariants import assert_invariants
from tests.chaos.kit import (
    Clock,
    all_terminal,
    executions_in_flight,
    quote_statuses,
    recovery_nudge,
    report_figures,
)

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]

QUOTES = 40
KILLS = 6


def test_worker_killed_at_random_points_executes_every_quote_exactly_once(chain, opened_books):
    seed = int(os.environ.get("CHAOS_SEED") or time.time())
    rng = random.Random(seed)
    clock = Clock()
    transactions_before = chain_transaction_count(chain)

    # Small batches (the executor takes up to EXECUTION_BATCH_SIZE waiting quotes at once),
    # so the 40 quotes are several batches and the kills land inside and between them.
    with ChaosStack(stack_env(EXECUTION_BATCH_SIZE="3")) as stack:
        customer = Customer(stack.base_url)
        planned = []
        for i in range(QUOTES):
            lamports = 1_000_000 + 1_000 * i
            quote, recipient = customer.quote_sol(lamports, source_chain=("stellar", "near")[i % 2])
            planned.append((quote, recipient, lamports))
        quote_ids = [q["quote_id"] for q, _, _ in planned]

        # Slow answers stretch each execution over several RPC round trips, so the kills
        # land between its steps rather than between executions.
        chain.admin.inject_faults(slow_requests=1_000_000, slow_ms=100)
        for quote, _, _ in planned:
            assert customer.pay(quote)["status"] == "committed"
        paid_at = clock()

        kills = []
        assert stack.worker is not None
        for _ in range(KILLS):
            # Once the (re)started cluster is executing, kill it at a random point of its work.
            steps = ExecutionTransition.objects.count()
            wait_until(lambda steps=steps: ExecutionTransition.objects.count() > steps
                       or all_terminal(quote_ids), timeout=30, interval=0.05,
                       on_tick=stack.worker.assert_alive, what="the worker executing again")
            if all_terminal(quote_ids):
                break
            time.sleep(rng.uniform(0.5, 1.5))
            in_flight = executions_in_flight()
            stack.worker.kill()
            kills.append({"t": clock(), "in_flight": in_flight,
                          "statuses": dict(quote_statuses(quote_ids))})
            time.sleep(rng.uniform(0.0, 0.3))
            stack.worker.start()
            # The tasks the dead cluster had claimed stay leased for Q_CLUSTER["retry"]
            # (180 s); the periodic jobs re-enqueue their quotes. Fire them now.
            recovery_nudge(older_than_seconds=0.0)
        chain.admin.clear_faults()
        killed_at = clock()

        last_nudge = [0.0]

        def nudge() -> None:
            if time.monotonic() - last_nudge[0] >= 2.0:
                recovery_nudge(older_than_seconds=1.0)
                last_nudge[0] = time.monotonic()

        recovery_seconds = wait_until(lambda: all_terminal(quote_ids), timeout=90, interval=0.5,
                                      on_tick=nudge, what="every quote executed after the kills")
        assert stack.worker.alive, stack.worker.log_tail()

    statuses = quote_statuses(quote_ids)
    assert statuses == {"executed": QUOTES}, statuses
    for quote, recipient, lamports in planned:
        assert chain.balance(recipient) == lamports, (quote["quote_id"], chain.balance(recipient), lamports)
    assert chain_transaction_count(chain) - transactions_before == QUOTES
    assert Execution.objects.count() == QUOTES
    assert ExecutionAttempt.objects.filter(state="landed").count() == QUOTES
    assert len(kills) >= 4, f"the work ended before enough kills: {kills}"
    assert sum(1 for k in kills if k["in_flight"]) >= 3, f"too few kills caught executions in flight: {kills}"
    report = assert_invariants()

    recovered = (ExecutionTransition.objects.filter(actor="system:recovery")
                 .values("execution_id").distinct().count())
    report_figures("worker_kill", {
        "seed": seed, "quotes": QUOTES, "kills": kills, "paid_at_s": paid_at,
        "kill_phase_end_s": killed_at, "recovery_s": round(recovery_seconds, 2),
        "executions_finished_by_recovery_job": recovered,
        "resends": sum(a.send_count - 1 for a in ExecutionAttempt.objects.all()),
        "attempts": ExecutionAttempt.objects.count(),
        "chain_transactions": QUOTES, "invariants": report["checked"], "facts": report["facts"],
    })
