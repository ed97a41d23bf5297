"""Rate limits for the expensive or abusable endpoints (rates in settings DEFAULT_THROTTLE_RATES).

Use on a view: `throttle_classes = [QuoteUserThrottle, QuoteIpThrottle]` (quote creation),
`[AuthThrottle]` (challenge/verify), `[WebhookThrottle]` (webhooks). A refused request
gets 429 RATE_LIMITED with `Retry-After` (seconds) from the exception handler.

The client address is the socket peer (`REMOTE_ADDR`); `X-Forwarded-For` is trusted only
for `TRUSTED_PROXY_COUNT` proxies (DRF NUM_PROXIES), so a client cannot pick its own IP.

Counts live in the Django cache: Redis when `REDIS_URL` is set (shared by all processes),
else LocMemCache, which is per process: with N web processes an address gets up to N
times the rate. Fine for the single-process embedded setup; set REDIS_URL in production.
"""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle


class _MethodScopedThrottle(SimpleRateThrottle):
    """Counts only the listed methods, so e.g. listing quotes never eats the creation budget."""

    methods: tuple[str, ...] = ("POST",)

    def allow_request(self, request: Request, view: Any) -> bool:
        if request.method not in self.methods:
            return True
        return super().allow_request(request, view)


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
