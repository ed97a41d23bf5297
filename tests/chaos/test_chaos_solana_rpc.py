"""The Solana RPC misbehaving while a real worker executes many paid quotes.

The sandbox node injects the faults real nodes show on the wire (its `sandbox_injectFaults`):
sends accepted and never executed, sends executed whose answer is lost (connection closed
or HTTP 503), sends delivered twice, statuses that lag, requests refused with 503, answers
slower than the client's timeout. Under all of them at once, every quote must land exactly
once or fail cleanly with its payment owed back; nothing may execute twice. A second test
drops every send until the blockhash expires: the executor may sign a new attempt only
then, and the dead attempt's bytes can never land afterwards.
"""

from __future__ import annotations

import contextlib
import time

import pytest
from solders.signature import Signature

from execution.models import Execution, ExecutionAttempt
from execution.solana.backend import SolanaError
from settlement.models import Refund
from tests.chaos.conftest import chain_transaction_count
from tests.chaos.harness import ChaosStack, Customer, stack_env, wait_until
from tests.chaos.invariants import assert_invariants
from tests.chaos.kit import Clock, all_terminal, quote_statuses, recovery_nudge, report_figures

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]

FAULTS = {"drop_sends": 6, "lose_send_responses": 5, "duplicate_sends": 6, "null_statuses": 25,
          "unavailable": 10, "slow_requests": 8}
LOST_AS_503 = 4


def _env() -> dict[str, str]:
    return stack_env(SOLANA_RPC_TIMEOUT_SECONDS="1.0", EXECUTION_RESEND_INTERVAL_SECONDS="0.3",
                     SOLANA_CONFIRM_TIMEOUT_SECONDS="30")


def _consumed(injected: dict[str, int], pending: dict[str, int]) -> dict[str, int]:
    return {name: count - int(pending.get(name, 0)) for name, count in injected.items()}


def test_every_quote_lands_once_or_fails_cleanly_under_rpc_faults(chain, opened_books):
    clock = Clock()
    transactions_before = chain_transaction_count(chain)
    with ChaosStack(_env()) as stack:
        customer = Customer(stack.base_url)
        planned = []  # (quote, what to read on chain, kind, amount)
        for i in range(16):
            lamports = 2_000_000 + 1_000 * i
            quote, recipient = customer.quote_sol(lamports, source_chain=("stellar", "near")[i % 2])
            planned.append((quote, recipient, "SOL", lamports))
        for i in range(6):
            amount = (3 + i) * 10**6
            quote, account = customer.quote_usdc(amount, source_chain=("near", "stellar")[i % 2])
            planned.append((quote, account, "USDC", amount))
        quote_ids = [p[0]["quote_id"] for p in planned]

        chain.admin.inject_faults(**FAULTS, slow_ms=1_500)
        injected = dict(FAULTS)
        for index, (quote, *_rest) in enumerate(planned):
            assert customer.pay(quote)["status"] == "committed"
            if index == len(planned) // 2:  # half-way: lost answers become HTTP 503s
                chain.admin.inject_faults(lose_send_responses=LOST_AS_503, lost_response_mode="503")
                injected["lose_send_responses"] += LOST_AS_503

        last_nudge = [time.monotonic()]

        def nudge() -> None:
            if time.monotonic() - last_nudge[0] >= 3.0:
                recovery_nudge(older_than_seconds=2.0)
                last_nudge[0] = time.monotonic()

        settle_seconds = wait_until(lambda: all_terminal(quote_ids), timeout=120, interval=0.5,
                                    on_tick=nudge, what="every quote landed or failed")
        pending_faults = chain.admin.faults()
        chain.admin.clear_faults()

    statuses = quote_statuses(quote_ids)
    assert set(statuses) <= {"executed", "refund_due"}, statuses
    executed = 0
    for quote, target, kind, amount in planned:
        held = chain.balance(target) if kind == "SOL" else (chain.token_balance(target)
                                                             if chain.backend.account(target) else 0)
        execution = Execution.objects.get(quote_id=quote["quote_id"])
        if execution.status == "confirmed":
            executed += 1
            assert held == amount, (quote["quote_id"], kind, held, amount)
        else:  # failed cleanly: nothing moved, the payment is owed back
            assert held == 0, (quote["quote_id"], kind, held)
            assert Refund.objects.filter(quote_id=quote["quote_id"], reason="execution_failed").exists()
    assert chain_transaction_count(chain) - transactions_before == executed
    consumed = _consumed(injected, pending_faults)
    assert consumed["drop_sends"] > 0 and consumed["duplicate_sends"] > 0, consumed
    assert consumed["lose_send_responses"] > 0 and consumed["unavailable"] > 0, consumed
    report = assert_invariants()

    attempts = list(ExecutionAttempt.objects.all())
    report_figures("solana_rpc_faults", {
        "quotes": len(planned), "executed": executed, "statuses": dict(statuses),
        "faults_injected": injected, "faults_consumed": consumed,
        "settle_s": round(settle_seconds, 2), "total_s": clock(),
        "attempts": len(attempts), "sends": sum(a.send_count for a in attempts),
        "max_sends_one_attempt": max(a.send_count for a in attempts),
        "chain_transactions": executed, "invariants": report["checked"], "facts": report["facts"],
    })


def test_dropped_sends_until_expiry_sign_a_new_attempt_only_after_the_old_one_is_dead(chain, opened_books):
    count = 4
    transactions_before = chain_transaction_count(chain)
    # One worker per execution: each driver keeps re-sending its attempt until it lands.
    env = {**_env(), "Q_WORKERS": str(count), "SOLANA_CONFIRM_TIMEOUT_SECONDS": "90"}
    with ChaosStack(env) as stack:
        customer = Customer(stack.base_url)
        planned = [customer.quote_sol(3_000_000 + i) + (3_000_000 + i,) for i in range(count)]
        quote_ids = [q["quote_id"] for q, _, _ in planned]

        chain.admin.inject_faults(drop_sends=1_000_000)  # the node accepts, the leader never sees
        for quote, _, _ in planned:
            customer.pay(quote)
        resent = ExecutionAttempt.objects.filter(state="signed", send_count__gte=2)
        wait_until(lambda: resent.count() == count, timeout=60,
                   what="every first attempt sent and re-sent, never landing")
        assert Execution.objects.filter(status="submitted").count() == count
        first_attempts = {a.execution_id: a for a in ExecutionAttempt.objects.filter(number=1)}
        assert chain_transaction_count(chain) == transactions_before

        chain.admin.expire_blockhash()  # 151 blocks: every first attempt is now provably dead
        wait_until(lambda: ExecutionAttempt.objects.filter(number=2).count() == count,
                   timeout=60, what="a second attempt signed for every execution")
        chain.admin.clear_faults()
        wait_until(lambda: all_terminal(quote_ids), timeout=60, on_tick=lambda: None,
                   what="every quote executed on its second attempt")

    assert quote_statuses(quote_ids) == {"executed": count}
    for _quote, recipient, lamports in planned:
        assert chain.balance(recipient) == lamports
    assert chain_transaction_count(chain) - transactions_before == count
    for execution_id, first in first_attempts.items():
        first.refresh_from_db()
        assert first.state == "expired", first.state
        landed = ExecutionAttempt.objects.get(execution_id=execution_id, state="landed")
        assert landed.number == 2
        # The dead attempt's bytes, sent again now, can never land (their blockhash is gone).
        with contextlib.suppress(SolanaError):
            chain.backend.send_raw(bytes(first.signed_transaction), skip_preflight=True)
        assert chain.backend.signature_status(Signature.from_string(first.signature)) is None
    assert chain_transaction_count(chain) - transactions_before == count
    report = assert_invariants()
    report_figures("solana_dropped_until_expiry", {
        "quotes": count, "first_attempt_sends": sorted(a.send_count for a in first_attempts.values()),
        "attempts": ExecutionAttempt.objects.count(), "chain_transactions": count,
        "invariants": report["checked"],
    })
