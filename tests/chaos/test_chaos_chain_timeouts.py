"""Horizon and the NEAR RPC timing out while clients pay (live-mode verification).

A real daphne and worker run in CHAIN_MODE=live against the fake Horizon and fake NEAR
JSON-RPC servers (real sockets, real wire shapes, transactions signed by stellar-sdk and
py-near); Solana is the session's sandbox. While the chain backends hang past the client
timeout (or answer 500), every door that needs them must answer 503 CHAIN_UNAVAILABLE
quickly and write nothing: no payment, no ledger entry, no commit, no execution; a webhook
is accepted (202) and its verification is rescheduled. When the backends come back, each
payment commits exactly once however many clients, retries and webhooks report it, and
each quote executes once.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
from django.conf import settings as django_settings
from django.utils import timezone
from stellar_sdk import Network

from bench.common import Api, ApiError
from config.webhooks import webhook_sign
from quotes.models import Quote, QuoteTransition
from settlement.models import FundingPayment, JournalEntry
from tests.chaos.harness import ChaosStack, Customer, stack_env, wait_until
from tests.chaos.invariants import assert_invariants
from tests.chaos.kit import all_terminal, quote_statuses, report_figures
from tests.fakes.horizon import FakeHorizon
from tests.fakes.near_rpc import FakeNearRpc
from tests.funding.kit import run_scheduled

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]

CLIENT_TIMEOUT = 1.0  # CHAIN_HTTP_TIMEOUT_SECONDS of the server processes
HANG = 2.5  # how long a "timeout" fault makes the fake wait before answering
HINT_TASK = "settlement.tasks.payment_hint_process"


def _live_env(horizon: FakeHorizon, near_rpc: FakeNearRpc) -> dict[str, str]:
    s = django_settings
    return stack_env(
        CHAIN_MODE="live", SECRET_KEY="chaos-live-" + s.SECRET_KEY[-16:], WEBHOOK_SECRET=s.WEBHOOK_SECRET,
        PRICE_SOURCE="fixed", SOLANA_CLUSTER="sandbox", SOLANA_TREASURY_KEY=s.SOLANA_TREASURY_KEY,
        QUOTE_SIGNING_KEY=s.QUOTE_SIGNING_KEY,
        STELLAR_HORIZON_URL=horizon.url, STELLAR_NETWORK_PASSPHRASE=Network.TESTNET_NETWORK_PASSPHRASE,
        STELLAR_TREASURY_ADDRESS=s.STELLAR_TREASURY_ADDRESS,
        STELLAR_TREASURY_SECRET=s.STELLAR_TREASURY_SECRET,
        NEAR_RPC_URL=near_rpc.url, NEAR_PAYMENT_ACCOUNT=s.NEAR_PAYMENT_ACCOUNT,
        NEAR_TREASURY_KEY=s.NEAR_TREASURY_KEY, CHAIN_HTTP_TIMEOUT_SECONDS=str(CLIENT_TIMEOUT),
    )


def _expect_unavailable(call, outage: list[float]) -> None:
    started = time.monotonic()
    with pytest.raises(ApiError) as refused:
        call()
    outage.append(time.monotonic() - started)
    assert (refused.value.status, refused.value.error_code) == (503, "CHAIN_UNAVAILABLE"), refused.value.body


def _nothing_booked(quote_ids: list[str]) -> None:
    assert FundingPayment.objects.count() == 0
    assert not JournalEntry.objects.filter(reference__startswith="payment:").exists()
    assert quote_statuses(quote_ids) == {"pending": len(quote_ids)}
    assert not QuoteTransition.objects.filter(to_status="committed").exists()


def _webhook(api: Api, chain: str, fields: dict[str, object]) -> dict[str, object]:
    hint = {"amount": "0", "memo": None, "timestamp": timezone.now().isoformat(), **fields}
    body = json.dumps(hint).encode()
    response = api.client.post(f"{api.base_url}/api/v1/webhooks/{chain}", content=body,
                               headers={"Content-Type": "application/json",
                                        "X-Webhook-Signature": webhook_sign(body)})
    assert response.status_code == 202, response.text
    return dict(response.json())


def test_chain_backend_outages_commit_nothing_then_each_payment_commits_exactly_once(
        chain, opened_books, settings):
    with FakeHorizon(Network.TESTNET_NETWORK_PASSPHRASE) as horizon, FakeNearRpc() as near_rpc:
        horizon.fault_delay = near_rpc.fault_delay = HANG
        with ChaosStack(_live_env(horizon, near_rpc)) as stack:
            customer = Customer(stack.base_url, join_near=False)
            outage_latencies: list[float] = []

            # Signing in with NEAR asks the RPC whether the key is a full-access key.
            near_rpc.add_access_key(customer.near.address, customer.near.public_key)
            near_rpc.set_fault("timeout")
            _expect_unavailable(customer.join_near, outage_latencies)
            near_rpc.set_fault(None)
            customer.join_near()

            sol_quote, sol_recipient = customer.quote_sol(7_000_000, source_chain="stellar")
            usdc_quote, usdc_account = customer.quote_usdc(4 * 10**6, source_chain="near")
            quote_ids = [sol_quote["quote_id"], usdc_quote["quote_id"]]
            envelope = customer.signed_payment(sol_quote)["envelope_xdr"]
            stellar_hash = horizon.add_transaction(envelope)["hash"]
            signed_near = customer.signed_payment(usdc_quote)["signed_transaction_base64"]
            near_hash = near_rpc.add_transaction(signed_near)
            stellar_body = {"tx_hash": stellar_hash}
            near_body = {"tx_hash": near_hash, "sender": customer.near.address}

            # -- the outage: hangs past the client timeout, then plain 500s -------------
            horizon.set_fault("timeout")
            near_rpc.set_fault("timeout")
            for _ in range(2):
                _expect_unavailable(lambda: customer.pay(sol_quote, stellar_body), outage_latencies)
                _expect_unavailable(lambda: customer.pay(usdc_quote, near_body), outage_latencies)
            hints = [_webhook(customer.api, "stellar", {"transaction_hash": stellar_hash}),
                     _webhook(customer.api, "near", {"transaction_hash": near_hash,
                                                     "signer_id": customer.near.address})]
            assert all(h["status"] == "queued" for h in hints)
            horizon.set_fault("500")
            near_rpc.set_fault("500")
            _expect_unavailable(lambda: customer.pay(sol_quote, stellar_body), outage_latencies)
            _expect_unavailable(lambda: customer.pay(usdc_quote, near_body), outage_latencies)

            from django_q.models import Schedule

            # The worker tried the webhooks' hints, found no verdict, and scheduled retries.
            wait_until(lambda: Schedule.objects.filter(func=HINT_TASK).count() == 2, timeout=30,
                       what="both webhook hints rescheduled by the worker")
            _nothing_booked(quote_ids)
            requests_during_outage = len(horizon.requests) + len(near_rpc.requests)

            # -- recovery: many clients report the same payments at once ------------------
            horizon.set_fault(None)
            near_rpc.set_fault(None)
            answers: list[tuple[str, int, str]] = []

            def report(quote: dict, body: dict) -> None:
                client = Api(stack.base_url, token=customer.token)
                try:
                    reply = client.post(f"/api/v1/quotes/{quote['quote_id']}/payment", body)
                    answers.append((quote["source_chain"], 200, reply["status"]))
                except ApiError as exc:
                    answers.append((quote["source_chain"], exc.status, exc.error_code or ""))
                finally:
                    client.close()

            threads = [threading.Thread(target=report, args=(q, b))
                       for q, b in [(sol_quote, stellar_body), (usdc_quote, near_body)] * 6]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert all(code == 200 for _, code, _ in answers), answers

            # The rescheduled webhook hints run later: now a replay that changes nothing.
            settings.CHAIN_MODE, settings.IS_LIVE = "live", True
            settings.STELLAR_HORIZON_URL, settings.NEAR_RPC_URL = horizon.url, near_rpc.url
            settings.STELLAR_NETWORK_PASSPHRASE = Network.TESTNET_NETWORK_PASSPHRASE
            retried = run_scheduled(HINT_TASK)
            settings.CHAIN_MODE, settings.IS_LIVE = "sandbox", False
            assert [r["replay"] for r in retried] == [True, True], retried

            wait_until(lambda: all_terminal(quote_ids), timeout=60, what="both quotes executed")

    assert quote_statuses(quote_ids) == {"executed": 2}
    assert FundingPayment.objects.count() == 2
    assert set(FundingPayment.objects.values_list("tx_hash", flat=True)) == {stellar_hash, near_hash}
    commits = Counter(QuoteTransition.objects.filter(to_status="committed")
                      .values_list("quote_id", flat=True))
    assert sorted(commits.values()) == [1, 1]
    assert chain.balance(sol_recipient) == 7_000_000
    assert chain.token_balance(usdc_account) == 4 * 10**6
    assert Quote.objects.filter(pk__in=quote_ids, execution__status="confirmed").count() == 2
    assert max(outage_latencies) < CLIENT_TIMEOUT + 2.0, outage_latencies
    report = assert_invariants()
    report_figures("chain_timeouts", {
        "refused_503_during_outage": len(outage_latencies),
        "outage_latency_ms": {"max": round(1000 * max(outage_latencies)),
                              "min": round(1000 * min(outage_latencies))},
        "backend_requests_during_outage": requests_during_outage,
        "concurrent_reports_after_recovery": len(answers),
        "answers": dict(Counter(f"{c}:{s}" for c, _, s in answers)),
        "payments": 2, "commits_per_quote": sorted(commits.values()),
        "invariants": report["checked"],
    })
