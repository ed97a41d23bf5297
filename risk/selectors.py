"""Reads of risk state: the breaker, today's spend, hourly outflow, quote volume, limits."""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from config.chains import NATIVE_ASSET, NATIVE_DECIMALS, Chain, format_amount, whole_to_smallest
from config.prepared import planned_each_time
from risk.models import CircuitBreaker, DailySpending

logger = logging.getLogger(__name__)

HOUR = dt.timedelta(hours=1)
VOLUME_BASELINE_HOURS = 24


def breaker_is_open() -> bool:
    """One indexed read (primary key): cheap enough for every quote and execution."""
    return CircuitBreaker.objects.filter(pk=1, is_open=True).exists()


def breaker_state() -> dict[str, Any]:
    breaker = CircuitBreaker.objects.filter(pk=1).first() or CircuitBreaker(pk=1)
    return {"open": breaker.is_open, "reason": breaker.reason, "trigger": breaker.trigger,
            "opened_at": breaker.opened_at}


def utc_today() -> dt.date:
    """The UTC day that daily limits count against."""
    return timezone.now().astimezone(dt.UTC).date()


@dataclass(frozen=True)
class RiskLimits:
    """The configured limits in smallest units (settings hold whole SOL / XLM / NEAR)."""

    chain_daily: Mapping[str, int]
    user_daily_lamports: int
    per_transaction_lamports: int


def risk_limits() -> RiskLimits:
    """The limits as the settings say now (read on every call, so a changed setting counts
    at once), converted once per distinct set of values."""
    return _limits_in_smallest_units(
        settings.SOLANA_DAILY_LIMIT, settings.STELLAR_DAILY_LIMIT, settings.NEAR_DAILY_LIMIT,
        settings.USER_DAILY_LIMIT_SOL, settings.PER_TRANSACTION_LIMIT_SOL)


@functools.lru_cache(maxsize=16)
def _limits_in_smallest_units(solana_daily: Decimal, stellar_daily: Decimal, near_daily: Decimal,
                              user_daily_sol: Decimal, per_transaction_sol: Decimal) -> RiskLimits:
    # Five Decimal scalings were ~70,000 instructions of every quote. The result is
    # shared by every caller: read-only (frozen, its mapping a proxy).
    sol = NATIVE_DECIMALS["SOL"]
    return RiskLimits(
        chain_daily=MappingProxyType({
            Chain.SOLANA: whole_to_smallest(solana_daily, sol),
            Chain.STELLAR: whole_to_smallest(stellar_daily, NATIVE_DECIMALS["XLM"]),
            Chain.NEAR: whole_to_smallest(near_daily, NATIVE_DECIMALS["NEAR"]),
        }),
        user_daily_lamports=whole_to_smallest(user_daily_sol, sol),
        per_transaction_lamports=whole_to_smallest(per_transaction_sol, sol),
    )


def since_last_reset(start: dt.datetime) -> Coalesce:
    """The later of `start` and the last operator reset, in SQL (no extra round trip).
    Outflow and volume an operator reviewed and reset must not trip the breaker again."""
    reset_at = Subquery(CircuitBreaker.objects.filter(pk=1).values("reset_at")[:1])
    return Coalesce(reset_at, Value(start))


def utc_minute(at: dt.datetime) -> dt.datetime:
    """The UTC minute `at` falls in (the key of its `OutflowMinute`)."""
    return at.astimezone(dt.UTC).replace(second=0, microsecond=0)


# The whole minutes from `since` on, from their totals; the part of a minute before the
# first whole one (after an operator's reset) from its rows. date_bin bins on the absolute
# time line, as `utc_minute` does, whatever the session's time zone.
_OUTFLOW_SINCE = """
WITH since AS (
    SELECT GREATEST(%s::timestamptz,
                    (SELECT reset_at FROM risk_circuitbreaker WHERE id = 1)) AS at),
bounds AS (
    SELECT at, date_bin('1 minute', at, TIMESTAMPTZ 'epoch')
               + CASE WHEN date_bin('1 minute', at, TIMESTAMPTZ 'epoch') = at
                      THEN interval '0' ELSE interval '1 minute' END AS whole
    FROM since)
SELECT COALESCE((SELECT sum(m.lamports) FROM risk_outflowminute m
                 WHERE m.minute >= (SELECT whole FROM bounds)), 0)
     + COALESCE((SELECT sum(o.lamports) FROM risk_treasuryoutflow o
                 WHERE o.at >= (SELECT at FROM bounds) AND o.at < (SELECT whole FROM bounds)), 0)
"""


def hourly_outflow_lamports() -> int:
    """Lamports booked as treasury outflow in the last hour: the current minute and the
    sixty whole minutes before it (so up to a minute more than an hour, never less), or
    since the last operator reset if later (exactly: outflow an operator reviewed must not
    count again). At most 61 minute totals read, whatever the volume."""
    window_start = utc_minute(timezone.now()) - HOUR
    # Ranges over tables that only grow: never a cached plan (config.prepared).
    with planned_each_time(), connection.cursor() as cursor:
        cursor.execute(_OUTFLOW_SINCE, [window_start])
        return int(cursor.fetchone()[0])


def quote_volume_counts() -> tuple[int, int]:
    """(quotes created in the last hour since the last reset, quotes in the 24 hours
    before that hour): one aggregate over the `created_at` index."""
    from quotes.models import Quote

    hour_ago = timezone.now() - HOUR
    counts = Quote.objects.filter(
        created_at__gte=hour_ago - HOUR * VOLUME_BASELINE_HOURS
    ).aggregate(
        last_hour=Count("pk", filter=Q(created_at__gte=hour_ago)
                        & Q(created_at__gte=since_last_reset(hour_ago))),
        baseline=Count("pk", filter=Q(created_at__lt=hour_ago)),
    )
    return int(counts["last_hour"]), int(counts["baseline"])


def spend_today() -> dict[str, int]:
    """Reserved spend per chain for the current UTC day, smallest units."""
    rows = DailySpending.objects.filter(day=utc_today()).values_list("chain", "amount_spent")
    return {chain: int(amount) for chain, amount in rows}


def _amount(smallest: int, asset: str) -> dict[str, str]:
    return {"amount": str(smallest), "whole": format_amount(smallest, NATIVE_DECIMALS[asset]),
            "asset": asset}


def limits_overview() -> dict[str, Any]:
    """Limits and breaker thresholds as clients and operators see them."""
    limits = risk_limits()
    spent = spend_today()
    chain_daily = {}
    for chain, limit in limits.chain_daily.items():
        asset = NATIVE_ASSET[Chain(chain)]
        used = spent.get(chain, 0)
        chain_daily[str(chain)] = {
            "limit": _amount(limit, asset),
            "spent_today": _amount(used, asset),
            "remaining_today": _amount(max(limit - used, 0), asset),
        }
    return {
        "day": utc_today().isoformat(),
        "chain_daily": chain_daily,
        "user_daily": _amount(limits.user_daily_lamports, "SOL"),
        "per_transaction": _amount(limits.per_transaction_lamports, "SOL"),
        "circuit_breaker": {
            "enabled": settings.CIRCUIT_BREAKER_ENABLED,
            "hourly_outflow_threshold": str(settings.HOURLY_OUTFLOW_THRESHOLD),
            "consecutive_failure_threshold": settings.CONSECUTIVE_FAILURE_THRESHOLD,
            "volume_spike_ratio": str(settings.VOLUME_SPIKE_RATIO),
            "volume_spike_floor": settings.VOLUME_SPIKE_FLOOR,
        },
    }


def _quote_signing_public_key() -> str | None:
    try:
        from quotes.signing import service_public_key

        return str(service_public_key())
    except Exception:  # no signing key configured: say so rather than fail the page
        logger.warning("quote signing public key unavailable", exc_info=True)
        return None


def _treasury_solana_address() -> str | None:
    try:
        from settlement.services.treasury import treasury_solana_address

        return treasury_solana_address()
    except Exception:  # no treasury key configured: say so rather than fail the page
        logger.warning("treasury Solana address unavailable", exc_info=True)
        return None


def treasury_overview() -> dict[str, Any]:
    """The public `/api/v1/treasury` document: where to pay, the limits, the breaker."""
    return {
        "solana": {"treasury": _treasury_solana_address(), "cluster": settings.SOLANA_CLUSTER,
                   "usdc_mint": settings.SOLANA_USDC_MINT or None,
                   "usdc_decimals": settings.SOLANA_USDC_DECIMALS},
        "stellar": {"address": settings.STELLAR_TREASURY_ADDRESS,
                    "network_passphrase": settings.STELLAR_NETWORK_PASSPHRASE},
        "near": {"payment_account": settings.NEAR_PAYMENT_ACCOUNT,
                 "network": settings.NEAR_NETWORK},
        "limits": limits_overview(),
        "circuit_breaker": breaker_state(),
        "mode": settings.CHAIN_MODE,
        "quote_signing_public_key": _quote_signing_public_key(),
    }
