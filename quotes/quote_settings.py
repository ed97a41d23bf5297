"""The settings every quote reads, read once per process (and again after any change).

A `django.conf.settings.X` read costs ~3,000 instructions (LazySettings' own
`__getattribute__` runs in Python), and a quote made about fifteen of them, some with a
conversion on top (the confidence limit parsed into a Decimal, the price feed's key
sorted, the rates printed into the snapshot). They are read into one frozen snapshot
instead, made again after Django's `setting_changed` (sent by override_settings and
pytest-django's `settings` fixture; a running server never changes its settings).
Settings a test session sets directly, without the signal (the sandbox's RPC URL and
USDC mint, tests/conftest.py), stay read where they are used.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver


@dataclass(frozen=True, slots=True)
class QuoteSettings:
    service_fee_rate: Decimal
    safety_buffer_rate: Decimal
    ttl_seconds: int
    stellar_payment_address: str
    near_payment_account: str
    price_max_age_seconds: int
    price_max_age: dt.timedelta
    price_max_confidence_ratio: Decimal  # exact, from the setting's float as written
    price_feed_key: tuple[Any, ...]  # what the process's price feed is built from


@functools.cache
def quote_settings() -> QuoteSettings:
    """The current snapshot."""
    if settings.PRICE_SOURCE == "pyth":
        feed_key: tuple[Any, ...] = ("pyth", settings.PYTH_HERMES_URL, settings.PYTH_API_KEY,
                                     settings.PRICE_CACHE_SECONDS)
    else:
        feed_key = ("fixed", tuple(sorted(settings.SANDBOX_PRICES_USD.items())))
    return QuoteSettings(
        service_fee_rate=settings.SERVICE_FEE_RATE,
        safety_buffer_rate=settings.QUOTE_SAFETY_BUFFER_RATE,
        ttl_seconds=settings.QUOTE_TTL_SECONDS,
        stellar_payment_address=settings.STELLAR_TREASURY_ADDRESS,
        near_payment_account=settings.NEAR_PAYMENT_ACCOUNT,
        price_max_age_seconds=settings.PRICE_MAX_AGE_SECONDS,
        price_max_age=dt.timedelta(seconds=settings.PRICE_MAX_AGE_SECONDS),
        price_max_confidence_ratio=Decimal(str(settings.PRICE_MAX_CONFIDENCE_RATIO)),
        price_feed_key=feed_key,
    )


@receiver(setting_changed)
def _forget_quote_settings(**kwargs: Any) -> None:
    quote_settings.cache_clear()
