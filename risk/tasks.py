"""django-q2 entry points for the risk app: thin wrappers over the services."""

from __future__ import annotations

import logging
from typing import Any

from risk.services import (
    alert_deliver,
    alerts_redeliver,
    breaker_check_hourly_outflow,
    breaker_check_quote_volume,
    treasury_balance_lamports,
)

logger = logging.getLogger(__name__)


def alert_deliver_task(alert_id: int) -> bool:
    return alert_deliver(alert_id=alert_id)


def risk_periodic_checks() -> dict[str, Any]:
    """Every minute: re-count quote volume and hourly outflow even when no quote or
    execution arrives to do it, and re-send alerts whose webhook failed."""
    breaker_check_quote_volume(force=True)
    balance = treasury_balance_lamports()
    if balance > 0:
        breaker_check_hourly_outflow(treasury_balance_lamports=balance)
    else:
        logger.warning("hourly outflow not checked: the ledger holds no treasury balance")
    return {"treasury_balance_lamports": balance, "alerts_redelivered": alerts_redeliver()}
