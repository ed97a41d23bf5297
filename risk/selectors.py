"""Reads of risk state."""

from __future__ import annotations

from risk.models import CircuitBreaker


def breaker_is_open() -> bool:
    """One indexed read (primary key): cheap enough for every quote and execution."""
    return CircuitBreaker.objects.filter(pk=1, is_open=True).exists()
