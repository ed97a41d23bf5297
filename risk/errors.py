"""Refusals raised by the risk controls, with the API's error codes."""

from __future__ import annotations

from config.errors import ServiceError, Unavailable


class CircuitBreakerOpen(Unavailable):
    """New quotes and executions are refused; committed quotes wait for an operator reset."""

    code, status = "CIRCUIT_BREAKER_TRIGGERED", 503
    default_message = "Service temporarily halted by the circuit breaker"


class TransactionLimitExceeded(ServiceError):
    code, status = "TRANSACTION_LIMIT_EXCEEDED", 400
    default_message = "The transaction exceeds the per-transaction limit"


class DailyLimitExceeded(ServiceError):
    code, status = "DAILY_LIMIT_EXCEEDED", 429
    default_message = "Daily limit exceeded"


class InsufficientTreasury(Unavailable):
    code, status = "INSUFFICIENT_TREASURY", 503
    default_message = "The treasury cannot cover this transaction right now"
