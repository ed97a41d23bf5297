"""Money arithmetic for quotes: exact integer math, every rounding up (the treasury's favour).

Nothing here touches floats. Prices are `Decimal` USD values (Pyth's `price × 10^expo` is
exact in Decimal); amounts are integers in a chain's smallest unit. Each value is taken as
its exact integer ratio (`Decimal.as_integer_ratio`) and every formula is ONE integer
fraction, so the only rounding is `ceil_div` at the end, tested at the edges (1 lamport,
expo -8 prices, 10^24 yoctoNEAR). Plain integers, not `Fraction`: a quote made ~37
Fraction objects (each reducing by gcd and checking its operands' ABCs), ~6% of its
instructions.
"""

from __future__ import annotations

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
# What conversion_band_width answers for a band that reaches zero: wider than any tier.
UNBOUNDED_BAND = Fraction(10**9)


def ceil_div(numerator: int, denominator: int) -> int:
    """The smallest integer >= numerator / denominator (denominator > 0): THE rounding of
    every conversion, fee and buffer."""
    if denominator <= 0:
        raise ValueError("denominator must be > 0")
    return -(-numerator // denominator)


def _ratio(value: Decimal | int | str | Fraction) -> tuple[int, int]:
    """`value` as exact integers (numerator, denominator > 0)."""
    if isinstance(value, Decimal):
        return value.as_integer_ratio()
    if isinstance(value, float):  # pragma: no cover - a programming error, never data
        raise TypeError("floats are not money")
    if isinstance(value, str):
        return Decimal(value).as_integer_ratio()
    if isinstance(value, int | Fraction):
        return value.numerator, value.denominator
    raise TypeError(f"not an exact amount: {type(value).__name__}")


def convert_ceil(amount_smallest: int, from_decimals: int, from_usd_price: Decimal,
                 to_decimals: int, to_usd_price: Decimal) -> int:
    """`amount_smallest` of asset A → the smallest units of asset B worth at least as much.

        ceil(amount × price_A × 10^to_decimals / (10^from_decimals × price_B))

    Exact integer arithmetic, one ceiling at the end: any fraction of a unit is charged.
    """
    if amount_smallest < 0:
        raise ValueError("amount must be >= 0")
    (from_num, from_den), (to_num, to_den) = _ratio(from_usd_price), _ratio(to_usd_price)
    if from_num <= 0 or to_num <= 0:
        raise ValueError("prices must be > 0")
    # price_A / price_B = (from_num × to_den) / (from_den × to_num)
    return ceil_div(amount_smallest * from_num * to_den * 10**to_decimals,
                    from_den * to_num * 10**from_decimals)


def rate_ceil(amount_smallest: int, rate: Decimal | str | Fraction) -> int:
    """ceil(amount × rate): service fees and safety buffers on an integer amount."""
    if amount_smallest < 0:
        raise ValueError("amount must be >= 0")
    numerator, denominator = _ratio(rate)
    return ceil_div(amount_smallest * numerator, denominator)


def conversion_band_width(from_price: Decimal, from_conf: Decimal,
                          to_price: Decimal, to_conf: Decimal) -> Fraction:
    """Relative width of the A→B rate's confidence band, as the seed measures it.

    With both prices at their band edges the output ranges from
    min = (pA − cA)/(pB + cB) to max = (pA + cA)/(pB − cB); width = (max − min) / min,
    i.e. ((pA + cA)(pB + cB) − (pA − cA)(pB − cB)) / ((pA − cA)(pB − cB)).
    A band that reaches zero is infinitely wide.
    """
    (pa_num, pa_den), (ca_num, ca_den) = _ratio(from_price), _ratio(from_conf)
    (pb_num, pb_den), (cb_num, cb_den) = _ratio(to_price), _ratio(to_conf)
    # pA ± cA over their common denominator (pa_den × ca_den > 0, the same for both, so
    # it cancels in the width); likewise for B.
    a_high, a_low = pa_num * ca_den + ca_num * pa_den, pa_num * ca_den - ca_num * pa_den
    b_high, b_low = pb_num * cb_den + cb_num * pb_den, pb_num * cb_den - cb_num * pb_den
    if a_low <= 0 or b_low <= 0:
        return UNBOUNDED_BAND
    low_product = a_low * b_low
    return Fraction(a_high * b_high - low_product, low_product)


def ttl_for_band(width: Fraction, base_ttl_seconds: int) -> int:
    """Seed tiers: > 5% → 240 s, > 10% → 180 s, > 15% → 120 s, never above the base TTL."""
    numerator, denominator = width.numerator, width.denominator
    for threshold, seconds in TTL_TIERS:
        # width > threshold, cross-multiplied (both denominators are > 0)
        if numerator * threshold.denominator > threshold.numerator * denominator:
            return min(seconds, base_ttl_seconds)
    return base_ttl_seconds


def priority_fee_lamports(cu_limit: int, micro_lamports_per_cu: int) -> int:
    """ceil(CU limit × micro-lamports per CU / 10^6), as the runtime charges it."""
    return ceil_div(cu_limit * micro_lamports_per_cu, 1_000_000)
