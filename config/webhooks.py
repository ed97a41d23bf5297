"""Webhook signatures, both directions: `X-Webhook-Signature: t=<unix>,v1=<hex>` where
v1 = HMAC-SHA256(WEBHOOK_SECRET, f"{t}.{raw body}") (the Stripe scheme). Incoming chain
webhooks are verified with it; our alerts and client notifications are signed with it."""

from __future__ import annotations

import hashlib
import hmac
import time

from django.conf import settings

HEADER = "X-Webhook-Signature"


def webhook_sign(body: bytes, *, secret: str | None = None, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    key = (secret or settings.WEBHOOK_SECRET).encode()
    mac = hmac.new(key, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def webhook_verify(header: str | None, body: bytes, *, secret: str | None = None,
                   tolerance: int | None = None, now: float | None = None) -> bool:
    """True only for a well-formed header, a matching MAC and a fresh timestamp."""
    if not header:
        return False
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    window = settings.WEBHOOK_TOLERANCE_SECONDS if tolerance is None else tolerance
    if abs((time.time() if now is None else now) - t) > window:
        return False
    secret_bytes = (secret or settings.WEBHOOK_SECRET).encode()
    expected = hmac.new(secret_bytes, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, candidate) for candidate in parts.get("v1", []))
