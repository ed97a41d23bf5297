"""Money arithmetic for quotes: exact rational math, every rounding up (the treasury's favour).

Nothing here touches floats. Prices are `Decimal` USD values (Pyth's `price × 10^expo` is
exact in Decimal); amounts are integers in a chain's smallest unit. Every intermediate is a
`Fraction`, so the only rounding is the final ceiling, and it is tested at the edges
(1 lamport, expo -8 prices, 10^24 yoctoNEAR).
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

# Seed risk analysis 1.2: the wider the oracle's band, the sooner the quote expires.
# (width of the conversion's confidence band, TTL in seconds), widest first.
#
# Two rules, two quantities, on purpose:
# * refusal is per feed: a price whose conf/price exceeds PRICE_MAX_CONFIDENCE_RATIO (2%)
#   is not trusted at all (PRICE_UNAVAILABLE);
# * the TTL uses the seed's measure, the relative width of the CONVERSION's band
#   ((max_out − min_out) / min_out with both prices at their band edges), which is about
#   twice the sum of the two feeds' ratios.
# With the default 2% per feed the widest accepted conversion band is
# (1.02/0.98)² − 1 ≈ 8.3%: the 240 s tier is live, while the 180 s and 120 s tiers only
# come into play when an operator accepts wider feeds (PRICE_MAX_CONFIDENCE_RATIO = 0.05
# reaches ≈ 22%). A quote is never refused for its TTL tier, only for an untrusted feed.
TTL_TIERS: tuple[tuple[Fraction, int], ...] = (
    (Fraction(15, 100), 120),
    (Fraction(10, 100), 180),
    (Fraction(5, 100), 240),
)


def _exact(value: Decimal | int | str | Fraction) -> Fraction:
    if isinstance(value, float):  # pragma: no cover - a programming error, never data
        raise TypeError("floats are not money")
    return Fraction(Decimal(value)) if isinstance(value, str) else Fraction(value)


def convert_ceil(amount_smallest: int, from_decimals: int, from_usd_price: Decimal,
                 to_decimals: int, to_usd_price: Decimal) -> int:
    """`amount_smallest` of asset A → the smallest units of asset B worth at least as much.

        ceil(amount × price_A × 10^to_decimals / (10^from_decimals × price_B))

    Exact rational arithmetic, one ceiling at the end: any fraction of a unit is charged.
    """
    if amount_smallest < 0:
        raise ValueError("amount must be >= 0")
    price_from, price_to = _exact(from_usd_price), _exact(to_usd_price)
    if price_from <= 0 or price_to <= 0:
        raise ValueError("prices must be > 0")
    value = (Fraction(amount_smallest) * price_from * 10**to_decimals
             / (10**from_decimals * price_to))
    return math.ceil(value)


def rate_ceil(amount_smallest: int, rate: Decimal | str | Fraction) -> int:
    """ceil(amount × rate): service fees and safety buffers on an integer amount."""
    if amount_smallest < 0:
        raise ValueError("amount must be >= 0")
    return math.ceil(Fraction(amount_smallest) * _exact(rate))


def conversion_band_width(from_price: Decimal, from_conf: Decimal,
                          to_price: Decimal, to_conf: Decimal) -> Fraction:
    """Relative width of the A→B rate's confidence band, as the seed measures it.

    With both prices at their band edges the output ranges from
    min = (pA − cA)/(pB + cB) to max = (pA + cA)/(pB − cB); width = (max − min) / min.
    A band that reaches zero is infinitely wide.
    """
    pa, ca, pb, cb = (_exact(v) for v in (from_price, from_conf, to_price, to_conf))
    if pa - ca <= 0 or pb - cb <= 0:
        return Fraction(10**9)
    low = (pa - ca) / (pb + cb)
    high = (pa + ca) / (pb - cb)
    return (high - low) / low


def ttl_for_band(width: Fraction, base_ttl_seconds: int) -> int:
    """Seed tiers: > 5% → 240 s, > 10% → 180 s, > 15% → 120 s, never above the base TTL."""
    for threshold, seconds in TTL_TIERS:
        if width > threshold:
            return min(seconds, base_ttl_seconds)
    return base_ttl_seconds


def priority_fee_lamports(cu_limit: int, micro_lamports_per_cu: int) -> int:
    """ceil(CU limit × micro-lamports per CU / 10^6), as the runtime charges it."""
    return -(-cu_limit * micro_lamports_per_cu // 1_000_000)
