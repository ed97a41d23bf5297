"""Conversions round up, exactly, at the edges: 1 lamport, expo -8 prices, 10^24 yocto."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotes.pricing import (
    ceil_div,
    conversion_band_width,
    convert_ceil,
    priority_fee_lamports,
    rate_ceil,
    ttl_for_band,
)


def pyth(price: int, expo: int) -> Decimal:
    """A Pyth integer price and exponent as the exact Decimal the feed builds."""
    return Decimal(price).scaleb(expo)


def test_one_lamport_converts_exactly_when_it_divides():
    # 1 lamport at $150/SOL = $1.5e-7 = 15 stroops at $0.10/XLM: no rounding needed.
    assert convert_ceil(1, 9, Decimal("150"), 7, Decimal("0.10")) == 15


def test_one_lamport_rounds_a_fraction_of_a_stroop_up():
    # $151.23456789 (expo -8): 1 lamport = 15.123456789 stroops → 16.
    sol = pyth(15_123_456_789, -8)
    assert sol == Decimal("151.23456789")
    assert convert_ceil(1, 9, sol, 7, Decimal("0.10")) == 16


def test_zero_stays_zero_and_never_rounds_up():
    assert convert_ceil(0, 9, Decimal("150"), 7, Decimal("0.10")) == 0
    assert rate_ceil(0, Decimal("0.001")) == 0


def test_expo_minus_8_prices_on_both_sides_are_exact():
    sol = pyth(14_999_999_999, -8)  # 149.99999999
    xlm = pyth(9_876_543, -8)  # 0.09876543
    amount = 1_000_000_000  # 1 SOL
    exact = Fraction(amount) * Fraction(sol) * 10**7 / (10**9 * Fraction(xlm))
    assert convert_ceil(amount, 9, sol, 7, xlm) == math.ceil(exact)
    assert convert_ceil(amount, 9, sol, 7, xlm) == 15_187_500_322  # 1518.75003215... XLM


def test_yocto_near_conversions_at_10_24():
    near = Decimal("3.00")
    # 1 lamport → yoctoNEAR: 150 / 3 × 10^24 / 10^9 = 5 × 10^16 exactly.
    assert convert_ceil(1, 9, Decimal("150"), 24, near) == 5 * 10**16
    # 1 NEAR (10^24 yocto) → lamports at $3 / $150 = 0.02 SOL exactly.
    assert convert_ceil(10**24, 24, near, 9, Decimal("150")) == 20_000_000
    # 1 yoctoNEAR → lamports: 2 × 10^-17 lamport, still one whole lamport charged.
    assert convert_ceil(1, 24, near, 9, Decimal("150")) == 1
    # 100 SOL into yoctoNEAR at an expo -8 NEAR price: 25 digits, no float anywhere.
    near_odd = pyth(333_333_333, -8)  # 3.33333333
    result = convert_ceil(100 * 10**9, 9, Decimal("150"), 24, near_odd)
    exact = Fraction(100 * 10**9) * 150 * 10**24 / (10**9 * Fraction(near_odd))
    assert result == math.ceil(exact) and result > exact > result - 1
    assert result == 4_500_000_004_500_000_004_500_000_005  # 4500.0000045 NEAR, in yocto


@given(amount=st.integers(min_value=0, max_value=10**20),
       price_a=st.integers(min_value=1, max_value=10**14),
       price_b=st.integers(min_value=1, max_value=10**14),
       expo=st.integers(min_value=-10, max_value=0),
       decimals=st.sampled_from([(9, 7), (9, 24), (6, 7), (6, 24), (24, 9)]))
def test_convert_is_the_smallest_integer_not_below_the_exact_value(amount, price_a, price_b,
                                                                     expo, decimals):
    a, b = pyth(price_a, expo), pyth(price_b, expo)
    result = convert_ceil(amount, decimals[0], a, decimals[1], b)
    exact = Fraction(amount) * Fraction(a) * 10**decimals[1] / (10**decimals[0] * Fraction(b))
    assert exact <= result < exact + 1


def test_ceil_div_rounds_every_remainder_up_and_nothing_else():
    assert ceil_div(0, 7) == 0
    assert ceil_div(14, 7) == 2
    assert ceil_div(15, 7) == 3
    assert ceil_div(1, 10**24) == 1
    assert ceil_div(10**24 + 1, 10**24) == 2
    assert ceil_div(-15, 7) == -2  # toward +infinity, never away from zero
    with pytest.raises(ValueError):
        ceil_div(1, 0)
    with pytest.raises(ValueError):
        ceil_div(1, -7)


@given(numerator=st.integers(min_value=-10**30, max_value=10**30),
       denominator=st.integers(min_value=1, max_value=10**30))
def test_ceil_div_is_the_exact_ceiling(numerator, denominator):
    assert ceil_div(numerator, denominator) == math.ceil(Fraction(numerator, denominator))


@given(amount=st.integers(min_value=0, max_value=10**30),
       rate=st.integers(min_value=0, max_value=10**8), expo=st.integers(min_value=-12, max_value=0))
def test_rate_is_the_exact_ceiling_for_decimal_string_and_fraction_rates(amount, rate, expo):
    decimal_rate = Decimal(rate).scaleb(expo)
    exact = math.ceil(amount * Fraction(decimal_rate))
    assert rate_ceil(amount, decimal_rate) == exact
    assert rate_ceil(amount, str(decimal_rate)) == exact
    assert rate_ceil(amount, Fraction(decimal_rate)) == exact


def test_service_fee_and_buffer_round_up():
    assert rate_ceil(1, Decimal("0.001")) == 1
    assert rate_ceil(1_000, Decimal("0.001")) == 1
    assert rate_ceil(1_001, Decimal("0.001")) == 2
    assert rate_ceil(15_150_375, Decimal("0.001")) == 15_151
    assert rate_ceil(10**24, Decimal("0.005")) == 5 * 10**21


def test_priority_fee_is_ceiled_like_the_runtime():
    assert priority_fee_lamports(200_000, 0) == 0
    assert priority_fee_lamports(200_000, 1) == 1  # 0.2 lamport → 1
    assert priority_fee_lamports(1_400_000, 1_000_000) == 1_400_000
    assert priority_fee_lamports(3, 333_334) == 2  # 1.000002 → 2


def test_floats_and_bad_prices_are_refused():
    with pytest.raises(TypeError):
        convert_ceil(1, 9, 150.0, 7, Decimal("0.1"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        convert_ceil(1, 9, Decimal(0), 7, Decimal("0.1"))
    with pytest.raises(ValueError):
        convert_ceil(-1, 9, Decimal(1), 7, Decimal("0.1"))


@pytest.mark.parametrize(("width", "ttl"), [
    (Fraction(0), 300), (Fraction(5, 100), 300), (Fraction(501, 10_000), 240),
    (Fraction(10, 100), 240), (Fraction(1001, 10_000), 180), (Fraction(15, 100), 180),
    (Fraction(1501, 10_000), 120), (Fraction(9), 120),
])
def test_ttl_tiers_follow_the_seed(width, ttl):
    assert ttl_for_band(width, 300) == ttl


def test_ttl_never_exceeds_the_configured_base():
    assert ttl_for_band(Fraction(6, 100), 60) == 60


@given(prices=st.lists(st.tuples(st.integers(min_value=1, max_value=10**14),
                                  st.integers(min_value=0, max_value=10**14),
                                  st.integers(min_value=-12, max_value=2)),
                        min_size=2, max_size=2))
def test_band_width_is_exactly_the_seeds_formula(prices):
    (pa, ca, ea), (pb, cb, eb) = prices
    a, a_conf, b, b_conf = pyth(pa, ea), pyth(ca, ea), pyth(pb, eb), pyth(cb, eb)
    width = conversion_band_width(a, a_conf, b, b_conf)
    fa, fca, fb, fcb = Fraction(a), Fraction(a_conf), Fraction(b), Fraction(b_conf)
    if fa - fca <= 0 or fb - fcb <= 0:
        assert width == 10**9  # a band reaching zero: wider than every tier
        return
    low, high = (fa - fca) / (fb + fcb), (fa + fca) / (fb - fcb)
    assert width == (high - low) / low


def test_band_width_is_the_seeds_output_bound_width():
    # ±1% on each price: (1.01/0.99) / (0.99/1.01) − 1 ≈ 4.08%.
    width = conversion_band_width(Decimal(100), Decimal(1), Decimal(10), Decimal("0.1"))
    assert width == Fraction(101 * 101, 99 * 99) - 1
    # At the default per-price limit (2% each) the widest accepted band is ≈ 8.3%.
    widest = conversion_band_width(Decimal(100), Decimal(2), Decimal(10), Decimal("0.2"))
    assert widest == Fraction(102 * 102, 98 * 98) - 1
    assert Fraction(8, 100) < widest < Fraction(84, 1000)
    assert ttl_for_band(widest, 300) == 240
