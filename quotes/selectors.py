"""Reads with rules: a user's quotes, seed status, and chart candles from price observations."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from quotes.errors import InvalidQuoteParameters
from quotes.models import PriceObservation, Quote, QuoteStatus

OHLC_INTERVALS = {"1m": dt.timedelta(minutes=1), "5m": dt.timedelta(minutes=5),
                  "1h": dt.timedelta(hours=1), "1d": dt.timedelta(days=1)}
OHLC_MAX_CANDLES = 1000


def quotes_for_user(*, user: Any, status: str | None = None) -> QuerySet[Quote]:
    queryset = Quote.objects.filter(user=user).order_by("-created_at", "-id")
    if status:
        if status not in QuoteStatus.values:
            raise InvalidQuoteParameters("Unknown quote status",
                                         details={"status": status, "allowed": QuoteStatus.values})
        queryset = queryset.filter(status=status)
    return queryset


def quote_seed_status(quote: Quote) -> dict[str, Any]:
    """The seed's `GET /status/{quote_id}` body (StatusResponse field names)."""
    from execution.models import Execution

    row = (Execution.objects.filter(quote_id=quote.pk)
           .values("signature", "confirmed_at", "error_message").first())
    execution: dict[str, Any] = dict(row) if row else {}
    executed_at = quote.executed_at or execution.get("confirmed_at")
    return {
        "quote_id": str(quote.pk),
        "status": quote.status,
        "solana_signature": execution.get("signature") or None,
        "executed_at": executed_at.isoformat().replace("+00:00", "Z") if executed_at else None,
        "error_message": execution.get("error_message") or None,
    }


def pair_from_path(pair: str) -> str:
    """`SOL-USD`, `sol_usd` or `SOLUSD` → the stored `SOL/USD`."""
    text = pair.upper().replace("_", "-")
    if "-" not in text and text.endswith("USD") and len(text) > 3:
        text = f"{text[:-3]}-USD"
    base, _, quote = text.partition("-")
    if not base.isalnum() or quote != "USD" or len(base) > 10:
        raise InvalidQuoteParameters("pair must look like SOL-USD", details={"pair": pair[:32]})
    return f"{base}/USD"


def price_candles(*, pair: str, interval: str, start: dt.datetime | None = None,
                  end: dt.datetime | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """OHLC candles over the observed prices of `pair` (oldest first), `limit` at most.

    One query: `date_bin` buckets each observation; open/close are the first/last price
    by publish time within the bucket. Buckets with no observation are absent (no
    invented prices). `count` is the number of observations behind the candle.
    """
    if interval not in OHLC_INTERVALS:
        raise InvalidQuoteParameters("interval must be one of 1m, 5m, 1h, 1d",
                                     details={"interval": interval})
    limit = max(1, min(limit, OHLC_MAX_CANDLES))
    step = OHLC_INTERVALS[interval]
    end = end or timezone.now()
    start = start or end - step * limit
    table = PriceObservation._meta.db_table
    sql = f"""
        SELECT bucket, (array_agg(price ORDER BY publish_time ASC))[1],
               max(price), min(price), (array_agg(price ORDER BY publish_time DESC))[1],
               count(*), max(source)
        FROM (SELECT date_bin(%s, publish_time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
                     price, publish_time, source
              FROM {table}
              WHERE pair = %s AND publish_time >= %s AND publish_time < %s) AS observed
        GROUP BY bucket ORDER BY bucket DESC LIMIT %s
    """  # noqa: S608 - our own table name; every value is a bound parameter
    with connection.cursor() as cursor:
        cursor.execute(sql, [step, pair, start, end, limit])  # type: ignore[list-item]
        rows = cursor.fetchall()
    return [
        {"time": bucket.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
         "open": _plain(o), "high": _plain(h), "low": _plain(low),
         "close": _plain(c), "count": n, "source": source}
        for bucket, o, h, low, c, n, source in reversed(rows)
    ]


def _plain(value: Any) -> str:
    """A Decimal as a plain decimal string ('150', '0.1234'), never '1.5E+2'."""
    return format(value.normalize(), "f")


_capacity_lock = threading.Lock()
_balance_cache: dict[str, tuple[float, int]] = {}
BALANCE_CACHE_SECONDS = 1.0


def _treasury_lamports_cached() -> int:
    """The treasury's live SOL balance, read at most once a second per process."""
    from quotes.solana import get_backend, treasury_pubkey

    treasury = str(treasury_pubkey())
    now = time.monotonic()
    with _capacity_lock:
        cached = _balance_cache.get(treasury)
        if cached is not None and now - cached[0] < BALANCE_CACHE_SECONDS:
            return cached[1]
    lamports = get_backend().balance(treasury_pubkey())
    with _capacity_lock:
        _balance_cache[treasury] = (time.monotonic(), lamports)
    return lamports


def treasury_quote_capacity() -> dict[str, Any]:
    """The largest SOL spend a new quote can be given right now (Across's
    `maxDepositInstant`): the live balance less what paid quotes already claim and the
    rent-exempt reserve, capped by the per-transaction limit. For `/api/v1/treasury`
    and clients sizing a payment before asking for a quote."""
    from django.conf import settings
    from django.db.models import Sum

    from config.chains import whole_to_smallest
    from quotes.services.quotes import IN_FLIGHT, TREASURY_RENT_RESERVE_LAMPORTS

    committed = int(Quote.objects.filter(status__in=IN_FLIGHT)
                    .aggregate(total=Sum("max_lamports_spend"))["total"] or 0)
    balance = _treasury_lamports_cached()
    available = max(0, balance - committed - TREASURY_RENT_RESERVE_LAMPORTS)
    per_transaction = whole_to_smallest(settings.PER_TRANSACTION_LIMIT_SOL, 9)
    return {"asset": "SOL", "max_lamports_spend": str(min(available, per_transaction)),
            "treasury_available_lamports": str(available),
            "per_transaction_limit_lamports": str(per_transaction)}
