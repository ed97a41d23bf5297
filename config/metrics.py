"""Prometheus metrics: `GET /metrics` in the text exposition format.

Two kinds of numbers, with different guarantees:

- Database-derived gauges (`DatabaseCollector`), computed at scrape time with a handful of
  aggregate queries: quotes by status, executions by status and failure reason, recent
  execution latency quantiles, funding payments (webhook/api/watcher) by status, the
  circuit breaker, treasury balances (last seen on chain and per the ledger) and today's
  spend against the daily limits. These are correct whichever process did the work
  (web, worker, management command), because the database is the shared truth.

- In-process counters and histograms that other code imports and updates:
  `EXECUTIONS.labels(outcome="confirmed").inc()`,
  `EXECUTION_LATENCY.observe(seconds)`, `WEBHOOKS.labels(chain="stellar", outcome="accepted").inc()`,
  plus HTTP request counts and latency recorded by `config.middleware.HttpMetricsMiddleware`.
  They live in the memory of the process that updates them. The web process serves
  /metrics, so what the django-q2 worker records (executions!) is NOT visible here unless
  every process shares a `PROMETHEUS_MULTIPROC_DIR` (prometheus-client's multiprocess mode:
  set the variable to an empty directory for all processes before they start; this view
  then aggregates the files). Without it, use the database-derived `solpay_executions`
  and `solpay_execution_latency_recent_seconds` gauges, which are always complete.

Access: only from `METRICS_ALLOWED_IPS` (addresses or CIDR networks, matched against the
socket peer, never X-Forwarded-For), and when `METRICS_TOKEN` is set, only with
`Authorization: Bearer <METRICS_TOKEN>`. Anything else gets the 403 envelope.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Iterable, Iterator
from decimal import Decimal
from functools import lru_cache

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Count, Max, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from config.chains import NATIVE_DECIMALS, whole_to_smallest
from config.errors import json_error

logger = logging.getLogger(__name__)

# --- In-process instruments other code imports -------------------------------------------

EXECUTIONS = Counter(
    "solpay_executions_finished",
    "Executions finished by this process, by outcome (confirmed, failed, ...)",
    ["outcome"],
)
EXECUTION_LATENCY = Histogram(
    "solpay_execution_latency_seconds",
    "Seconds from execution start to its final state, observed by this process",
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 300),
)
WEBHOOKS = Counter(
    "solpay_webhooks_received",
    "Incoming payment webhooks by chain and outcome (accepted, duplicate, rejected, ...)",
    ["chain", "outcome"],
)
HTTP_REQUESTS = Counter(
    "solpay_http_requests",
    "HTTP requests by method, URL route pattern and status code",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "solpay_http_request_duration_seconds",
    "HTTP request latency by method and URL route pattern",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


# --- Database-derived gauges, collected at scrape time ------------------------------------

_DAILY_LIMIT_SETTINGS = {
    # chain: (setting in whole units, asset whose decimals convert it)
    "solana": ("SOLANA_DAILY_LIMIT", "SOL"),
    "stellar": ("STELLAR_DAILY_LIMIT", "XLM"),
    "near": ("NEAR_DAILY_LIMIT", "NEAR"),
}
_LATENCY_WINDOW_SECONDS = 3600


def _daily_limits_base_units() -> dict[str, int]:
    return {chain: whole_to_smallest(Decimal(getattr(settings, name)), NATIVE_DECIMALS[asset])
            for chain, (name, asset) in _DAILY_LIMIT_SETTINGS.items()}


class DatabaseCollector(Collector):
    """Gauges read from PostgreSQL at each scrape: correct across web and worker processes."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("solpay_metrics_database_up",
                               "1 when the database-derived metrics below could be read")
        try:
            families = list(self._families())
        except DatabaseError:
            logger.warning("metrics: database unavailable", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterable[Metric]:
        yield from self._quotes()
        yield from self._executions()
        yield from self._funding_payments()
        yield from self._breaker()
        yield from self._treasury()
        yield from self._limits()

    def _quotes(self) -> Iterable[Metric]:
        from quotes.models import Quote, QuoteStatus

        counts = dict.fromkeys(QuoteStatus.values, 0)
        counts.update(Quote.objects.order_by().values_list("status").annotate(n=Count("pk")))
        family = GaugeMetricFamily("solpay_quotes", "Quotes by current status", labels=["status"])
        for status, n in sorted(counts.items()):
            family.add_metric([status], n)
        yield family

    def _executions(self) -> Iterable[Metric]:
        from execution.models import Execution, ExecutionStatus

        counts = dict.fromkeys(ExecutionStatus.values, 0)
        reasons: dict[str, int] = {}
        rows = (Execution.objects.order_by().values_list("status", "fail_reason")
                .annotate(n=Count("pk")))
        for status, reason, n in rows:
            counts[status] = counts.get(status, 0) + n
            if status == ExecutionStatus.FAILED:
                reasons[reason or "unknown"] = reasons.get(reason or "unknown", 0) + n
        by_status = GaugeMetricFamily("solpay_executions", "Executions by current status (outcome)",
                                      labels=["status"])
        for status, n in sorted(counts.items()):
            by_status.add_metric([status], n)
        yield by_status
        failures = GaugeMetricFamily("solpay_execution_failures", "Failed executions by reason",
                                     labels=["reason"])
        for reason, n in sorted(reasons.items()):
            failures.add_metric([reason], n)
        yield failures

        # Quantiles of created→confirmed over the last hour, computed by PostgreSQL.
        table = connection.ops.quote_name(Execution._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT count(*), "  # noqa: S608 - table name from the model, no user input
                f"percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP "
                f"(ORDER BY EXTRACT(EPOCH FROM confirmed_at - created_at)) "
                f"FROM {table} WHERE status = %s AND confirmed_at >= now() - make_interval(secs => %s)",
                [ExecutionStatus.CONFIRMED, _LATENCY_WINDOW_SECONDS],
            )
            count, quantiles = cursor.fetchone()
        latency = GaugeMetricFamily(
            "solpay_execution_latency_recent_seconds",
            "Execution latency (created to confirmed) quantiles over the last hour, all processes",
            labels=["quantile"])
        for q, value in zip(("0.5", "0.95", "0.99"), quantiles or (), strict=False):
            if value is not None:
                latency.add_metric([q], float(value))
        yield latency
        recent = GaugeMetricFamily("solpay_executions_confirmed_recent",
                                   "Executions confirmed in the last hour")
        recent.add_metric([], count)
        yield recent

    def _funding_payments(self) -> Iterable[Metric]:
        from settlement.models import FundingPayment

        family = GaugeMetricFamily(
            "solpay_funding_payments",
            "Funding payments by chain, how we learnt of them (webhook, api, watcher) and status",
            labels=["chain", "source", "status"])
        rows = (FundingPayment.objects.order_by().values_list("chain", "source", "status")
                .annotate(n=Count("pk")))
        for chain, source, status, n in sorted(rows):
            family.add_metric([chain, source, status], n)
        yield family

    def _breaker(self) -> Iterable[Metric]:
        from risk.models import CircuitBreaker

        row = CircuitBreaker.objects.filter(pk=1).values_list("is_open", "consecutive_failures").first()
        is_open, failures = row if row else (False, 0)
        state = GaugeMetricFamily("solpay_circuit_breaker_open", "1 while the circuit breaker is open")
        state.add_metric([], 1 if is_open else 0)
        yield state
        streak = GaugeMetricFamily("solpay_circuit_breaker_consecutive_failures",
                                   "Consecutive failed executions counted by the breaker")
        streak.add_metric([], failures)
        yield streak

    def _treasury(self) -> Iterable[Metric]:
        from settlement.models import LedgerAccount, Posting, TreasuryAccount

        on_chain = GaugeMetricFamily(
            "solpay_treasury_chain_balance_base_units",
            "Treasury balance last read from the chain, in the asset's smallest unit",
            labels=["chain", "asset"])
        for chain, asset, balance in (TreasuryAccount.objects.order_by("chain", "asset")
                                      .filter(last_chain_balance__isnull=False)
                                      .values_list("chain", "asset", "last_chain_balance")):
            on_chain.add_metric([chain, asset], float(balance))
        yield on_chain
        booked = GaugeMetricFamily(
            "solpay_treasury_ledger_balance_base_units",
            "Treasury balance per the ledger (sum of postings), in the asset's smallest unit",
            labels=["chain", "asset"])
        rows = (Posting.objects.order_by()
                .filter(account__kind=LedgerAccount.Kind.ASSET, account__code__startswith="treasury:")
                .values_list("account__chain", "asset").annotate(total=Sum("amount")))
        for chain, asset, total in sorted(rows):
            booked.add_metric([chain, asset], float(total or 0))
        yield booked

    def _limits(self) -> Iterable[Metric]:
        from risk.models import DailySpending, UserDailySpending

        today = timezone.now().date()
        limits = _daily_limits_base_units()
        spent = dict.fromkeys(limits, Decimal(0))
        spent.update(DailySpending.objects.filter(day=today).values_list("chain", "amount_spent"))
        spent_family = GaugeMetricFamily("solpay_daily_spent_base_units",
                                         "Spend reserved today (UTC) per chain, smallest unit",
                                         labels=["chain"])
        limit_family = GaugeMetricFamily("solpay_daily_limit_base_units",
                                         "Configured daily limit per chain, smallest unit",
                                         labels=["chain"])
        usage_family = GaugeMetricFamily("solpay_daily_limit_usage_ratio",
                                         "Today's spend divided by the daily limit, per chain",
                                         labels=["chain"])
        for chain in sorted(spent):
            amount = spent[chain]
            limit = limits.get(chain)
            spent_family.add_metric([chain], float(amount))
            if limit:
                limit_family.add_metric([chain], float(limit))
                usage_family.add_metric([chain], float(Decimal(amount) / Decimal(limit)))
        yield from (spent_family, limit_family, usage_family)

        user_limit = whole_to_smallest(Decimal(settings.USER_DAILY_LIMIT_SOL), NATIVE_DECIMALS["SOL"])
        top = UserDailySpending.objects.filter(day=today).aggregate(m=Max("amount_spent"))["m"] or 0
        user_family = GaugeMetricFamily(
            "solpay_user_daily_limit_max_usage_ratio",
            "The highest per-user share of the per-user daily limit used today")
        user_family.add_metric([], float(Decimal(top) / Decimal(user_limit)) if user_limit else 0.0)
        yield user_family


class _ProcessCollector(Collector):
    """This process's own instruments (the default registry) inside the scrape registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def scrape_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ProcessCollector())
    registry.register(DatabaseCollector())
    return registry


# --- The endpoint ---------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _allowed_networks(entries: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip()]


def metrics_access_allowed(request: HttpRequest) -> bool:
    try:
        peer = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    networks = _allowed_networks(tuple(settings.METRICS_ALLOWED_IPS))
    if not any(peer in network for network in networks):
        return False
    expected = getattr(settings, "METRICS_TOKEN", "")
    if not expected:
        return True
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {expected}".encode())


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not metrics_access_allowed(request):
        return json_error(request, 403, "Metrics are not available from this address",
                          "FORBIDDEN")
    return HttpResponse(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST)
