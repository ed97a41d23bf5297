"""The quote path's settings snapshot (quotes.quote_settings) follows every settings change
made the Django way: the next quote prices, expires and refuses with the new values."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from quotes.prices import price_feed
from quotes.quote_settings import quote_settings


def test_a_changed_setting_is_read_by_the_next_call(settings):
    settings.SERVICE_FEE_RATE = Decimal("0.001")
    settings.QUOTE_TTL_SECONDS = 300
    assert (quote_settings().service_fee_rate, quote_settings().ttl_seconds) == (Decimal("0.001"), 300)

    settings.SERVICE_FEE_RATE = Decimal("0.25")
    settings.QUOTE_TTL_SECONDS = 60
    settings.PRICE_MAX_CONFIDENCE_RATIO = 0.05
    settings.PRICE_MAX_AGE_SECONDS = 7
    knobs = quote_settings()
    assert (knobs.service_fee_rate, knobs.ttl_seconds) == (Decimal("0.25"), 60)
    assert knobs.price_max_confidence_ratio == Decimal("0.05")
    assert (knobs.price_max_age, knobs.price_max_age_seconds) == (dt.timedelta(seconds=7), 7)


def test_new_sandbox_prices_give_a_new_feed(settings):
    settings.PRICE_SOURCE = "fixed"
    settings.SANDBOX_PRICES_USD = {"SOL": "150.00", "XLM": "0.10"}
    assert price_feed().prices(["SOL"])["SOL"].price == Decimal("150.00")
    settings.SANDBOX_PRICES_USD = {"SOL": "99.50", "XLM": "0.10"}
    assert price_feed().prices(["SOL"])["SOL"].price == Decimal("99.50")
