"""Reads of executions for the API, WebSocket events and the admin."""

from __future__ import annotations

from typing import Any

from execution.models import Execution
from quotes.models import Quote


def execution_summary(quote: Quote) -> dict[str, Any] | None:
    """What a client may see of a quote's execution (amounts as strings, DESIGN.md §4)."""
    execution = (Execution.objects.filter(quote_id=quote.pk)
                 .only("status", "signature", "fail_reason", "error_message", "fee_lamports",
                       "compute_units_consumed", "treasury_outflow_lamports", "attempt_count",
                       "slot", "submitted_at", "confirmed_at")
                 .first())
    return execution_summary_of(execution)


def execution_summary_of(execution: Execution | None) -> dict[str, Any] | None:
    """`execution_summary` of an execution already in hand (no query)."""
    if execution is None:
        return None
    return {
        "status": execution.status,
        "signature": execution.signature or None,
        "fail_reason": execution.fail_reason or None,
        "error_message": execution.error_message or None,
        "fee_lamports": None if execution.fee_lamports is None else str(execution.fee_lamports),
        "compute_units_consumed": execution.compute_units_consumed,
        "treasury_outflow_lamports": (None if execution.treasury_outflow_lamports is None
                                      else str(execution.treasury_outflow_lamports)),
        "attempts": execution.attempt_count,
        "slot": execution.slot,
        "submitted_at": execution.submitted_at.isoformat() if execution.submitted_at else None,
        "executed_at": execution.confirmed_at.isoformat() if execution.confirmed_at else None,
    }
