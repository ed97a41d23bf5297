"""Quotes priced while other transactions land: a quote's price is its own work's cost.

Under load, executions land on the treasury all the time while new quotes are priced.
Here the real web process prices SOL transfers (each moves exactly its amount to a fresh
recipient, so its outflow is known to the lamport) while a thread lands other treasury
transfers back to back. Every quote's `treasury_outflow` must be exactly its amount: a
lower one makes the executor's guard refuse the work later (the customer is refunded, the
service looks broken), a higher one charges the customer for someone else's transfer.
"""

from __future__ import annotations

import threading

import pytest
from solders.keypair import Keypair

from execution.solana import spl
from tests.chaos.harness import ChaosStack, Customer, stack_env
from tests.chaos.kit import report_figures

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]

QUOTES = 80
AMOUNT = 1_000_000  # lamports per quoted transfer
LANDING = 5_000_000  # lamports per concurrent treasury transfer


class MispricedQuotes(AssertionError):
    pass


# Regression guard: work_cost once read the treasury's pre-state in parallel with the
# simulation, so a transaction landing between the two reads leaked into this quote's
# price. It now reads the pre-state before and after simulating and retries on change.


def test_quotes_priced_while_transactions_land_cost_exactly_their_own_work(chain, settings):
    treasury = Keypair.from_base58_string(settings.SOLANA_TREASURY_KEY)
    sink = Keypair().pubkey()
    stop = threading.Event()
    landed = [0]

    def land_other_transfers() -> None:
        while not stop.is_set():
            blockhash, last_valid = chain.backend.latest_blockhash()
            tx = spl.build_transaction(treasury, [spl.sol_transfer(treasury.pubkey(), sink, LANDING),
                                                  spl.memo(f"other work {landed[0]}")], blockhash)
            spl.send_and_confirm(chain.backend, tx, last_valid)
            landed[0] += 1

    with ChaosStack(stack_env(), worker=False) as stack:
        customer = Customer(stack.base_url, join_near=False)
        lander = threading.Thread(target=land_other_transfers, daemon=True)
        lander.start()
        try:
            quotes = [customer.quote_sol(AMOUNT)[0] for _ in range(QUOTES)]
        finally:
            stop.set()
            lander.join(10)

    outflows = [int(q["treasury_outflow"]) for q in quotes]
    wrong = [o for o in outflows if o != AMOUNT]
    report_figures("quote_pricing_race", {
        "quotes": QUOTES, "concurrent_landings": landed[0], "mispriced": len(wrong),
        "too_low": sum(1 for o in wrong if o < AMOUNT), "too_high": sum(1 for o in wrong if o > AMOUNT),
        "examples": sorted(set(wrong))[:5],
    })
    assert landed[0] > QUOTES // 2, "too few transfers landed to test the race"
    if wrong:
        raise MispricedQuotes(f"{len(wrong)} of {QUOTES} quotes priced another transaction's "
                              f"transfer into their outflow (expected {AMOUNT}): {sorted(set(wrong))[:5]}")
