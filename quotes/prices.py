"""Oracle prices in USD behind one small interface, `PriceFeed`.

* `PythHermesFeed` (live): Pyth Hermes `GET /v2/updates/price/latest?ids[]=...&parsed=true`,
  `Authorization: Bearer <PYTH_API_KEY>` when a key is set. Every feed we price with is
  fetched in ONE request and the answer is shared by all threads of the process for
  `PRICE_CACHE_SECONDS` (1 s): a burst of quotes makes one request, and the threads that
  arrive while it is in flight wait for it instead of sending their own.
* `FixedPriceFeed` (sandbox): `SANDBOX_PRICES_USD`, reported as source "fixed", published
  "now", confidence 0, so nobody mistakes them for market prices.

`PriceFeed.prices()` refuses (PRICE_UNAVAILABLE, 503) a price older than
`PRICE_MAX_AGE_SECONDS` or whose confidence band is wider than
`PRICE_MAX_CONFIDENCE_RATIO` of the price: quoting on a stale or uncertain price would hand
the spread to whoever notices first.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx2
from django.conf import settings

from quotes.errors import PriceUnavailable
from quotes.quote_settings import quote_settings

# Pyth price feed ids (CHAINS.md; USDC/USD from Pyth's feed list).
PYTH_FEED_IDS: dict[str, str] = {
    "SOL": "ef0d8b6fda2ceba41da15d4095d1da392a0d2f8ed0c6c7bc0f4cfac8c280b56d",
    "XLM": "b7a8eba68a997cd0210c2e1e4ee811ad2d174b3611c22d9ebf16f4cb7e9ba850",
    "NEAR": "c415de8d2eba7db216527dff4b60e8f3a5311c740dadb233e13e12547e226750",
    "USDC": "eaa020c61cc479712813461ce153894a96a6c00b21ed0cfc2798d1f9a9e9c94a",
}


@dataclass(frozen=True, slots=True)
class PricePoint:
    """One asset's USD price as the oracle published it."""

    symbol: str
    price: Decimal
    confidence: Decimal  # ± USD around `price`
    publish_time: dt.datetime
    source: str  # "pyth" | "fixed"

    @property
    def pair(self) -> str:
        return f"{self.symbol}/USD"

    @property
    def confidence_ratio(self) -> Decimal:
        return self.confidence / self.price


class PriceFeed(ABC):
    source: str = ""

    @abstractmethod
    def latest(self, symbols: Iterable[str]) -> dict[str, PricePoint]:
        """Raw latest prices (no freshness rules); PriceUnavailable if the oracle fails."""

    def prices(self, symbols: Iterable[str], *, now: dt.datetime | None = None) -> dict[str, PricePoint]:
        """Latest prices, refused when stale or too uncertain to quote on."""
        wanted = list(dict.fromkeys(symbols))
        points = self.latest(wanted)
        now = now or dt.datetime.now(dt.UTC)
        limits = quote_settings()
        max_age, max_ratio = limits.price_max_age, limits.price_max_confidence_ratio
        for symbol in wanted:
            point = points.get(symbol)
            if point is None:
                raise PriceUnavailable(f"No {symbol}/USD price", details={"pair": f"{symbol}/USD"})
            age = now - point.publish_time
            if age > max_age:
                raise PriceUnavailable(
                    f"The {point.pair} price is stale",
                    details={"pair": point.pair, "age_seconds": int(age.total_seconds()),
                             "max_age_seconds": limits.price_max_age_seconds},
                )
            if point.price <= 0 or point.confidence_ratio > max_ratio:
                raise PriceUnavailable(
                    f"The {point.pair} price is too uncertain",
                    details={"pair": point.pair,
                             "confidence_ratio": (f"{point.confidence_ratio:.6f}"
                                                  if point.price > 0 else "inf"),
                             "max_confidence_ratio": str(max_ratio)},
                )
        return {symbol: points[symbol] for symbol in wanted}


class FixedPriceFeed(PriceFeed):
    """Sandbox prices from settings: exact, confidence 0, published at the time asked."""

    source = "fixed"

    def __init__(self, prices_usd: dict[str, str]) -> None:
        self._prices = {symbol: Decimal(value) for symbol, value in prices_usd.items()}

    def latest(self, symbols: Iterable[str]) -> dict[str, PricePoint]:
        # Whole seconds: one observation per pair per second is what the charts store.
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        return {
            symbol: PricePoint(symbol, self._prices[symbol], Decimal(0), now, self.source)
            for symbol in symbols if symbol in self._prices
        }


class PythHermesFeed(PriceFeed):
    """Pyth Hermes over HTTP with keep-alive, cached per process for `cache_seconds`."""

    source = "pyth"

    def __init__(self, base_url: str, *, api_key: str = "", cache_seconds: float = 1.0,
                 timeout: float = 5.0, feed_ids: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_seconds = cache_seconds
        self.feed_ids = dict(feed_ids or PYTH_FEED_IDS)
        self._symbol_for_id = {feed_id: symbol for symbol, feed_id in self.feed_ids.items()}
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx2.Client(base_url=self.base_url, headers=headers, timeout=timeout,
                                     limits=httpx2.Limits(max_keepalive_connections=4))
        # One lock for the cache AND the fetch: threads arriving during a fetch wait for it.
        self._lock = threading.Lock()
        self._cached: dict[str, PricePoint] = {}
        self._fetched_at = float("-inf")
        self.request_count = 0

    def latest(self, symbols: Iterable[str]) -> dict[str, PricePoint]:
        wanted = list(symbols)
        unknown = [s for s in wanted if s not in self.feed_ids]
        if unknown:
            raise PriceUnavailable(f"No Pyth feed configured for {', '.join(unknown)}")
        with self._lock:
            if time.monotonic() - self._fetched_at >= self.cache_seconds:
                self._cached = self._fetch_all()
                self._fetched_at = time.monotonic()
            cached = self._cached
        return {s: cached[s] for s in wanted if s in cached}

    def _fetch_all(self) -> dict[str, PricePoint]:
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("ids[]", feed_id) for feed_id in self.feed_ids.values()]
        params.append(("parsed", "true"))
        self.request_count += 1
        try:
            response = self._client.get("/v2/updates/price/latest", params=params)
        except httpx2.HTTPError as exc:
            raise PriceUnavailable("The price oracle is unreachable",
                                   details={"reason": type(exc).__name__}) from None
        if response.status_code != 200:
            raise PriceUnavailable("The price oracle refused the request",
                                   details={"oracle_status": response.status_code})
        try:
            return self._parse(response.json())
        except (ValueError, KeyError, TypeError, InvalidOperation):
            raise PriceUnavailable("The price oracle sent an unreadable answer") from None

    def _parse(self, body: dict[str, Any]) -> dict[str, PricePoint]:
        out: dict[str, PricePoint] = {}
        for item in body["parsed"]:
            symbol = self._symbol_for_id.get(str(item["id"]).lower().removeprefix("0x"))
            if symbol is None:
                continue
            price = item["price"]
            expo = int(price["expo"])
            out[symbol] = PricePoint(
                symbol=symbol,
                price=Decimal(int(price["price"])).scaleb(expo),
                confidence=Decimal(int(price["conf"])).scaleb(expo),
                publish_time=dt.datetime.fromtimestamp(int(price["publish_time"]), dt.UTC),
                source=self.source,
            )
        return out

    def close(self) -> None:
        self._client.close()


_feed_lock = threading.Lock()
_feed: tuple[tuple[Any, ...], PriceFeed] | None = None


def price_feed() -> PriceFeed:
    """The process's feed for the current settings (rebuilt only when they change)."""
    global _feed
    key = quote_settings().price_feed_key
    current = _feed
    if current is not None and current[0] == key:
        return current[1]
    with _feed_lock:
        if _feed is None or _feed[0] != key:
            if _feed is not None and isinstance(_feed[1], PythHermesFeed):
                _feed[1].close()
            feed: PriceFeed
            # Built from its key's own values, so the feed is always the one its key names.
            if key[0] == "pyth":
                _, hermes_url, api_key, cache_seconds = key
                feed = PythHermesFeed(hermes_url, api_key=api_key, cache_seconds=cache_seconds,
                                      timeout=settings.CHAIN_HTTP_TIMEOUT_SECONDS)
            else:
                feed = FixedPriceFeed(dict(key[1]))
            _feed = (key, feed)
        return _feed[1]
