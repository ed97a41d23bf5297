"""What the operators' treasury dashboard shows, read in a fixed, small number of queries.

Per chain: the on-chain balance as last read by reconciliation (`TreasuryAccount`), the
booked balance (`treasury:<chain>:<asset>` in the ledger), what is in flight (Solana:
executions signed or sent but not final, at their quote bound; Stellar / NEAR: approved or
sent refunds and withdrawals), and today's spend against the daily limit. Then the last
hour's Solana outflow against HOURLY_OUTFLOW_THRESHOLD of the treasury, the breaker, the
work waiting for an operator, and outflow / quote volume per hour (24 h) and per day (7 d).
The rules themselves (limits, thresholds, what trips the breaker) are read from the risk
selectors, never re-derived here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Count, DateTimeField, Q, Sum
from django.db.models.functions import Trunc
from django.utils import timezone
from django.utils.safestring import SafeString

from config.admin_charts import Bucket, bar_chart_svg
from config.chains import NATIVE_ASSET, NATIVE_DECIMALS, Chain, format_amount

CHAINS = (Chain.SOLANA, Chain.STELLAR, Chain.NEAR)


@dataclass
class TreasuryRow:
    chain: str
    asset: str
    decimals: int
    address: str = ""
    on_chain: int | None = None
    checked_at: dt.datetime | None = None
    booked: int = 0
    in_flight: int = 0
    in_flight_count: int = 0
    in_flight_what: str = ""
    spent_today: int | None = None
    daily_limit: int | None = None

    @property
    def asset_label(self) -> str:
        """SPL assets are named by their mint address: show the one we know by name."""
        if self.asset == getattr(settings, "SOLANA_USDC_MINT", None):
            return "USDC"
        return self.asset if len(self.asset) <= 12 else f"{self.asset[:6]}…"

    def text(self, amount: int | None) -> str:
        if amount is None:
            return "—"
        return f"{format_amount(amount, self.decimals)} {self.asset_label}"

    @property
    def on_chain_text(self) -> str:
        return self.text(self.on_chain)

    @property
    def booked_text(self) -> str:
        return self.text(self.booked)

    @property
    def in_flight_text(self) -> str:
        return self.text(self.in_flight)

    @property
    def difference(self) -> int | None:
        return None if self.on_chain is None else self.on_chain - self.booked

    @property
    def difference_text(self) -> str:
        return self.text(self.difference)

    @property
    def spent_text(self) -> str:
        return self.text(self.spent_today)

    @property
    def limit_text(self) -> str:
        return self.text(self.daily_limit)

    @property
    def spent_percent(self) -> float | None:
        if not self.daily_limit or self.spent_today is None:
            return None
        return round(100.0 * self.spent_today / self.daily_limit, 1)


@dataclass
class HourlyOutflow:
    outflow: int
    threshold_ratio: Decimal
    balance: int
    balance_source: str  # "on-chain" | "booked"

    @property
    def limit(self) -> int:
        return int(self.threshold_ratio * self.balance)

    @property
    def percent_of_limit(self) -> float | None:
        return None if self.limit <= 0 else round(100.0 * self.outflow / self.limit, 1)

    @property
    def outflow_text(self) -> str:
        return f"{format_amount(self.outflow, 9)} SOL"

    @property
    def limit_text(self) -> str:
        return f"{format_amount(self.limit, 9)} SOL"

    @property
    def threshold_percent(self) -> str:
        return f"{self.threshold_ratio * 100:.0f}%"


@dataclass
class Dashboard:
    generated_at: dt.datetime
    mode: str
    treasuries: list[TreasuryRow]
    hourly: HourlyOutflow
    breaker: Any
    breaker_events: list[Any]
    waiting: dict[str, int]
    charts: dict[str, SafeString] = field(default_factory=dict)


def _treasury_rows() -> list[TreasuryRow]:
    from execution.models import Execution, ExecutionStatus
    from risk.selectors import risk_limits, spend_today
    from settlement.ledger import balances_by_account
    from settlement.models import Refund, RefundStatus, TreasuryAccount, Withdrawal, WithdrawalStatus

    rows: dict[tuple[str, str], TreasuryRow] = {}
    for native_chain in CHAINS:
        asset = NATIVE_ASSET[native_chain]
        rows[(native_chain, asset)] = TreasuryRow(chain=native_chain, asset=asset,
                                                  decimals=NATIVE_DECIMALS[asset])
    for account in TreasuryAccount.objects.order_by("chain", "asset"):
        row = rows.setdefault((account.chain, account.asset),
                              TreasuryRow(chain=account.chain, asset=account.asset,
                                          decimals=account.decimals))
        row.address = account.address
        row.on_chain = None if account.last_chain_balance is None else int(account.last_chain_balance)
        row.checked_at = account.last_checked_at

    for code, balance in balances_by_account("treasury:").items():
        _, booked_chain, booked_asset = code.split(":", 2)
        booked_row = rows.get((booked_chain, booked_asset))
        if booked_row is not None:
            booked_row.booked = balance

    spent = spend_today()
    for limited_chain, limit in risk_limits().chain_daily.items():
        limited_row = rows[(str(limited_chain), NATIVE_ASSET[Chain(limited_chain)])]
        limited_row.daily_limit, limited_row.spent_today = limit, spent.get(str(limited_chain), 0)

    live = Execution.objects.filter(status__in=[ExecutionStatus.SIGNED, ExecutionStatus.SUBMITTED])
    solana = live.aggregate(total=Sum("quote__max_lamports_spend"), count=Count("pk"))
    sol_row = rows[(Chain.SOLANA, "SOL")]
    sol_row.in_flight, sol_row.in_flight_count = int(solana["total"] or 0), solana["count"]
    sol_row.in_flight_what = "executions signed or sent, not final (at their quote bound)"

    outgoing = [
        Refund.objects.filter(status__in=[RefundStatus.APPROVED, RefundStatus.SENT]),
        Withdrawal.objects.filter(status__in=[WithdrawalStatus.APPROVED, WithdrawalStatus.SIGNED,
                                              WithdrawalStatus.SUBMITTED]),
    ]
    for queryset in outgoing:
        for item in queryset.values("chain", "asset").annotate(total=Sum("amount"), count=Count("pk")):
            outgoing_row = rows.get((item["chain"], item["asset"]))
            if outgoing_row is not None:
                outgoing_row.in_flight += int(item["total"] or 0)
                outgoing_row.in_flight_count += item["count"]
                outgoing_row.in_flight_what = "refunds and withdrawals approved or sent, not completed"
    return list(rows.values())


def _hourly_outflow(treasuries: list[TreasuryRow]) -> HourlyOutflow:
    from risk.selectors import hourly_outflow_lamports

    sol = next(row for row in treasuries if row.chain == Chain.SOLANA and row.asset == "SOL")
    balance, source = (sol.on_chain, "on-chain") if sol.on_chain is not None else (sol.booked, "booked")
    return HourlyOutflow(outflow=hourly_outflow_lamports(),
                         threshold_ratio=Decimal(settings.HOURLY_OUTFLOW_THRESHOLD),
                         balance=max(balance, 0), balance_source=source)


def _waiting_work() -> dict[str, int]:
    """Counts of the work that waits for an operator (each links to a filtered list)."""
    from execution.models import Execution, ExecutionStatus
    from settlement.models import (
        FundingPayment,
        FundingPaymentStatus,
        Refund,
        RefundStatus,
        Settlement,
        SettlementStatus,
        Withdrawal,
        WithdrawalStatus,
    )

    stuck_before = timezone.now() - dt.timedelta(seconds=settings.SETTLEMENT_STUCK_AFTER_SECONDS)
    executions = Execution.objects.aggregate(
        needs_recovery=Count("pk", filter=Q(needs_recovery=True)),
        in_flight=Count("pk", filter=Q(status__in=[ExecutionStatus.SIGNED, ExecutionStatus.SUBMITTED])),
        failed_today=Count("pk", filter=Q(status=ExecutionStatus.FAILED,
                                          updated_at__gte=timezone.now() - dt.timedelta(hours=24))),
    )
    return {
        **executions,
        "unmatched_payments": FundingPayment.objects.filter(
            status=FundingPaymentStatus.UNMATCHED, resolved_at__isnull=True).count(),
        "refunds_due": Refund.objects.filter(status__in=[RefundStatus.DUE, RefundStatus.FAILED]).count(),
        "withdrawals_pending": Withdrawal.objects.filter(
            status=WithdrawalStatus.PENDING_APPROVAL).count(),
        "settlements_stuck": Settlement.objects.filter(
            Q(status__in=[SettlementStatus.FAILED, SettlementStatus.TIMED_OUT])
            | Q(status=SettlementStatus.PENDING, created_at__lt=stuck_before)).count(),
    }


def _series(queryset: Any, *, time_field: str, kind: str, start: dt.datetime, steps: int,
            step: dt.timedelta, value: Any) -> list[tuple[dt.datetime, int]]:
    """One GROUP BY date_trunc query; buckets with no rows are filled with zero."""
    rows = (queryset.filter(**{f"{time_field}__gte": start})
            .annotate(bucket=Trunc(time_field, kind, output_field=DateTimeField(), tzinfo=dt.UTC))
            .values("bucket").annotate(value=value).order_by("bucket"))
    found = {row["bucket"]: int(row["value"] or 0) for row in rows}
    return [(start + step * i, found.get(start + step * i, 0)) for i in range(steps)]


def _charts(now: dt.datetime) -> dict[str, SafeString]:
    from quotes.models import Quote
    from risk.models import TreasuryOutflow

    hour = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    day = hour.replace(hour=0)
    hours_start, days_start = hour - dt.timedelta(hours=23), day - dt.timedelta(days=6)

    def sol(lamports: int) -> str:
        return f"{format_amount(lamports, 9)} SOL"

    def hourly(points: list[tuple[dt.datetime, int]]) -> list[Bucket]:
        return [Bucket(f"{at:%H}h", value, f"{at:%Y-%m-%d %H}:00 UTC") for at, value in points]

    def daily(points: list[tuple[dt.datetime, int]]) -> list[Bucket]:
        return [Bucket(f"{at:%a %d}", value, f"{at:%Y-%m-%d}") for at, value in points]

    outflows = TreasuryOutflow.objects.all()
    quotes = Quote.objects.all()
    outflow_24h = _series(outflows, time_field="at", kind="hour", start=hours_start, steps=24,
                          step=dt.timedelta(hours=1), value=Sum("lamports"))
    outflow_7d = _series(outflows, time_field="at", kind="day", start=days_start, steps=7,
                         step=dt.timedelta(days=1), value=Sum("lamports"))
    volume_24h = _series(quotes, time_field="created_at", kind="hour", start=hours_start, steps=24,
                         step=dt.timedelta(hours=1), value=Count("pk"))
    volume_7d = _series(quotes, time_field="created_at", kind="day", start=days_start, steps=7,
                        step=dt.timedelta(days=1), value=Count("pk"))
    return {
        "outflow_24h": bar_chart_svg(title="Treasury outflow per hour, last 24 h (UTC)",
                                     buckets=hourly(outflow_24h), value_text=sol, label_every=3),
        "outflow_7d": bar_chart_svg(title="Treasury outflow per day, last 7 days",
                                    buckets=daily(outflow_7d), value_text=sol),
        "volume_24h": bar_chart_svg(title="Quotes per hour, last 24 h (UTC)",
                                    buckets=hourly(volume_24h), color="#79aec8", label_every=3),
        "volume_7d": bar_chart_svg(title="Quotes per day, last 7 days",
                                   buckets=daily(volume_7d), color="#79aec8"),
    }


def treasury_dashboard() -> Dashboard:
    from risk.models import CircuitBreaker, CircuitBreakerEvent

    now = timezone.now()
    treasuries = _treasury_rows()
    return Dashboard(
        generated_at=now,
        mode=settings.CHAIN_MODE,
        treasuries=treasuries,
        hourly=_hourly_outflow(treasuries),
        breaker=CircuitBreaker.objects.filter(pk=1).first() or CircuitBreaker(pk=1),
        breaker_events=list(CircuitBreakerEvent.objects.order_by("-at")[:5]),
        waiting=_waiting_work(),
        charts=_charts(now),
    )
