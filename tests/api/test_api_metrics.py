"""GET /metrics: Prometheus text with DB-derived gauges and in-process counters, access-controlled."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from config.metrics import EXECUTION_LATENCY, EXECUTIONS, WEBHOOKS
from execution.models import Execution
from risk.models import CircuitBreaker, DailySpending
from settlement.models import FundingPayment, TreasuryAccount
from tests.factories import QuoteFactory

pytestmark = [pytest.mark.django_db]


def _scrape(client, **extra) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", **extra)
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_report_database_state(client, user):
    QuoteFactory.create_batch(2, user=user)
    executed = QuoteFactory(user=user, status="executed")
    now = timezone.now()
    Execution.objects.create(quote=executed, status="confirmed", signature="sig1",
                             created_at=now - timezone.timedelta(seconds=4), confirmed_at=now)
    failed_quote = QuoteFactory(user=user, status="failed")
    Execution.objects.create(quote=failed_quote, status="failed", fail_reason="SIMULATION_FAILED")
    FundingPayment.objects.create(chain="stellar", tx_hash="t1", quote=executed, status="matched",
                                  asset="XLM", amount=Decimal(5), from_address="G1",
                                  to_address="G2", source="webhook")
    TreasuryAccount.objects.create(chain="solana", asset="SOL", address="T", decimals=9,
                                   last_chain_balance=Decimal(5 * 10**9))
    DailySpending.objects.create(chain="solana", day=timezone.now().date(),
                                 amount_spent=Decimal(25 * 10**9))
    CircuitBreaker.objects.filter(pk=1).update(is_open=True, opened_at=now, reason="test",
                                               consecutive_failures=5)

    samples = _scrape(client)

    assert samples[("solpay_metrics_database_up", ())] == 1
    assert samples[("solpay_quotes", (("status", "pending"),))] == 2
    assert samples[("solpay_quotes", (("status", "executed"),))] == 1
    assert samples[("solpay_quotes", (("status", "refunded"),))] == 0
    assert samples[("solpay_executions", (("status", "confirmed"),))] == 1
    assert samples[("solpay_execution_failures", (("reason", "SIMULATION_FAILED"),))] == 1
    median = samples[("solpay_execution_latency_recent_seconds", (("quantile", "0.5"),))]
    assert median == pytest.approx(4, abs=0.01)
    assert samples[("solpay_funding_payments",
                    (("chain", "stellar"), ("source", "webhook"), ("status", "matched")))] == 1
    assert samples[("solpay_circuit_breaker_open", ())] == 1
    assert samples[("solpay_circuit_breaker_consecutive_failures", ())] == 5
    assert samples[("solpay_treasury_chain_balance_base_units",
                    (("asset", "SOL"), ("chain", "solana")))] == 5 * 10**9
    assert samples[("solpay_daily_limit_base_units", (("chain", "solana"),))] == 100 * 10**9
    assert samples[("solpay_daily_limit_usage_ratio", (("chain", "solana"),))] == pytest.approx(0.25)
    assert samples[("solpay_daily_limit_usage_ratio", (("chain", "near"),))] == 0


def test_ledger_treasury_balance(client):
    from settlement.ledger import Leg, account_code, ledger_post

    ledger_post(reference="fund-1", kind="inventory_funding", legs=[
        Leg(account_code("treasury", "solana", "SOL"), "SOL", 7 * 10**9),
        Leg(account_code("inventory_funding", "solana", "SOL"), "SOL", -7 * 10**9),
    ])
    samples = _scrape(client)
    assert samples[("solpay_treasury_ledger_balance_base_units",
                    (("asset", "SOL"), ("chain", "solana")))] == 7 * 10**9


def test_in_process_counters_are_exported(client):
    before = _scrape(client)
    EXECUTIONS.labels(outcome="confirmed").inc()
    EXECUTION_LATENCY.observe(3.2)
    WEBHOOKS.labels(chain="near", outcome="accepted").inc(2)
    after = _scrape(client)
    key = ("solpay_executions_finished_total", (("outcome", "confirmed"),))
    assert after[key] == before.get(key, 0) + 1
    webhooks = ("solpay_webhooks_received_total", (("chain", "near"), ("outcome", "accepted")))
    assert after[webhooks] == before.get(webhooks, 0) + 2
    count = ("solpay_execution_latency_seconds_count", ())
    assert after[count] == before.get(count, 0) + 1
    http = ("solpay_http_requests_total", (("method", "GET"), ("route", "metrics"), ("status", "200")))
    assert after[http] >= 1


def test_metrics_refused_from_other_addresses(client):
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 403
    assert response.json()["error_code"] == "FORBIDDEN"
    # X-Forwarded-For does not help.
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="127.0.0.1")
    assert response.status_code == 403


@override_settings(METRICS_ALLOWED_IPS=["10.0.0.0/8"], METRICS_TOKEN="scrape-token-123456")
def test_metrics_networks_and_token(client):
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403  # no token
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3",
                      HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    ok = client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer scrape-token-123456")
    assert ok.status_code == 200
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-123456").status_code == 403


def test_metrics_is_get_only(client):
    response = client.post("/metrics")
    assert response.status_code == 405
    assert response.json()["error_code"] == "METHOD_NOT_ALLOWED"


def test_scrape_cost_is_a_handful_of_queries(client, django_assert_max_num_queries):
    with django_assert_max_num_queries(12):
        client.get("/metrics")


def test_every_request_counts_once_in_its_own_label_set(client):
    """The middleware keeps each label set's counter and histogram after the first request:
    they must be the ones /metrics exports, one count per request, per status."""
    from prometheus_client import REGISTRY

    def counts(status: str) -> tuple[float, float]:
        labels = {"method": "GET", "route": "metrics"}
        return (REGISTRY.get_sample_value("solpay_http_requests_total", {**labels, "status": status})
                or 0.0,
                REGISTRY.get_sample_value("solpay_http_request_duration_seconds_count", labels)
                or 0.0)

    ok_before, timed_before = counts("200")
    refused_before, _ = counts("403")
    for _ in range(3):
        assert client.get("/metrics").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 403
    ok_after, timed_after = counts("200")
    assert ok_after == ok_before + 3
    assert counts("403")[0] == refused_before + 1
    assert timed_after == timed_before + 4
