"""Rate limits for the expensive or abusable endpoints (rates in settings DEFAULT_THROTTLE_RATES).

Use on a view: `throttle_classes = [QuoteUserThrottle, QuoteIpThrottle]` (quote creation),
`[AuthThrottle]` (challenge/verify), `[WebhookThrottle]` (webhooks). A refused request
gets 429 RATE_LIMITED with `Retry-After` (seconds) from the exception handler.

The client address is the socket peer (`REMOTE_ADDR`); `X-Forwarded-For` is trusted only
for `TRUSTED_PROXY_COUNT` proxies (DRF NUM_PROXIES), so a client cannot pick its own IP.

A rate N/period is a bucket of N requests refilled evenly over the period (GCRA, the
generic cell rate algorithm): one timestamp per key, one cache read and one write per
request whatever the rate. A full bucket lets N requests through at once; after that one
per period/N. DRF's SimpleRateThrottle keeps a list of every request's time in the period
and loads and stores it whole on each request: at the default 12,000/min per address that
list cost ~0.8 ms of CPU per request at full rate, more than a quote's SQL. As with DRF's,
two requests of one key at the same instant may both read the same state: a limit against
abuse, not an exact quota.

The state lives in the Django cache: Redis when `REDIS_URL` is set (shared by all processes),
else LocMemCache, which is per process: with N web processes an address gets up to N
times the rate. Fine for the single-process embedded setup; set REDIS_URL in production.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from django.core.cache import DEFAULT_CACHE_ALIAS, caches
from django.core.cache import cache as default_cache
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle


@functools.lru_cache(maxsize=64)
def _parsed_rate(rate: str) -> tuple[int, int]:
    return SimpleRateThrottle.parse_rate(None, rate)  # type: ignore[arg-type,return-value]


class _MethodScopedThrottle(SimpleRateThrottle):
    """Counts only the listed methods, so e.g. listing quotes never eats the creation budget."""

    methods: tuple[str, ...] = ("POST",)
    _wait: float = 0.0

    def parse_rate(self, rate: str | None) -> tuple[int | None, int | None]:
        # Every request makes its throttles anew, each parsing the same few rate strings.
        return (None, None) if rate is None else _parsed_rate(rate)

    def allow_request(self, request: Request, view: Any) -> bool:
        if request.method not in self.methods or self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        # The thread's cache backend, found once for the read and the write: every
        # attribute read through the `django.core.cache.cache` proxy finds it again
        # (an asgiref Local look-up, ~16,000 instructions each).
        cache = caches[DEFAULT_CACHE_ALIAS] if self.cache is default_cache else self.cache
        now = self.timer()
        interval = self.duration / self.num_requests  # one request's share of the period
        burst = self.duration - interval  # how far ahead of now the schedule may run
        # The time the bucket is next full ("theoretical arrival time"); now when idle.
        scheduled = max(cache.get(self.key, now), now)
        if scheduled - now > burst:
            self._wait = scheduled - now - burst
            return False
        scheduled += interval
        cache.set(self.key, scheduled, timeout=math.ceil(scheduled - now))
        return True

    def wait(self) -> float:
        return max(self._wait, 1.0)


class _PerIp(_MethodScopedThrottle):
    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class _PerUser(_MethodScopedThrottle):
    """Per authenticated user; anonymous requests fall back to their address."""

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        user = getattr(request, "user", None)
        if user is not None and getattr(user, "is_authenticated", False):
            ident = f"user:{user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class QuoteUserThrottle(_PerUser):
    scope = "quote_user"


class QuoteIpThrottle(_PerIp):
    scope = "quote_ip"


class AuthThrottle(_PerIp):
    """Challenge and verify: per address (the caller has no token yet)."""

    scope = "auth"


class WebhookThrottle(_PerIp):
    scope = "webhook"
