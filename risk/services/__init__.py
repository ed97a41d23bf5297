"""Risk controls' write paths: spend limits (`limits`), the circuit breaker (`breaker`),
operator alerts (`alerts`). Import from here; the modules are an implementation detail."""

from risk.services.alerts import alert_deliver, alert_raise, alerts_redeliver
from risk.services.breaker import (
    Trigger,
    breaker_assert_closed,
    breaker_check_hourly_outflow,
    breaker_check_quote_volume,
    breaker_on_reset,
    breaker_record_execution_outcome,
    breaker_reset,
    breaker_trip,
    breaker_trip_by_operator,
    breaker_trip_reconciliation_mismatch,
)
from risk.services.limits import (
    QuoteRiskState,
    risk_check_quote,
    risk_consume_execution,
    risk_quote_state,
    risk_quote_state_select,
    risk_release_execution,
    risk_reserve_execution,
    treasury_balance_lamports,
)

__all__ = [
    "QuoteRiskState",
    "Trigger",
    "alert_deliver",
    "alert_raise",
    "alerts_redeliver",
    "breaker_assert_closed",
    "breaker_check_hourly_outflow",
    "breaker_check_quote_volume",
    "breaker_on_reset",
    "breaker_record_execution_outcome",
    "breaker_reset",
    "breaker_trip",
    "breaker_trip_by_operator",
    "breaker_trip_reconciliation_mismatch",
    "risk_check_quote",
    "risk_consume_execution",
    "risk_quote_state",
    "risk_quote_state_select",
    "risk_release_execution",
    "risk_reserve_execution",
    "treasury_balance_lamports",
]
