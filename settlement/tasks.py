"""django-q2 tasks of the settlement app. Thin: each calls one service.

The ORM broker is at-least-once, so every task here is safe to run twice: a payment is
booked once by UNIQUE(chain, tx_hash), and the watcher's cursor only moves forward.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from django.utils import timezone

from risk.audit import audit_record
from settlement.services.funding import (
    ChainUnavailableError,
    PaymentRefused,
    payment_submit,
)
from settlement.watchers import stellar_watch_once

logger = logging.getLogger(__name__)

# A webhook can arrive before the chain node we ask has the transaction (or before NEAR
# finality): retry with backoff for about an hour, then give up loudly.
HINT_RETRY_DELAYS_SECONDS = (15, 30, 60, 120, 300, 600, 1200, 1800)
_NOT_YET = {"NOT_FOUND", "NOT_FINAL"}


def payment_hint_process(chain: str, tx_hash: str, sender: str | None = None,
                         attempt: int = 1) -> dict[str, Any]:
    """Verify a live-mode webhook's hint against the chain and book it (or retry later)."""
    try:
        outcome = payment_submit(chain=chain, source="webhook", tx_hash=tx_hash, sender=sender)
    except ChainUnavailableError:
        return _retry_later(chain, tx_hash, sender, attempt, reason="CHAIN_UNAVAILABLE")
    except PaymentRefused as exc:
        if exc.reason in _NOT_YET:
            return _retry_later(chain, tx_hash, sender, attempt, reason=exc.reason)
        return {"status": "refused", "reason": exc.reason}
    return {"status": outcome.status, "payment_id": str(outcome.payment.pk),
            "replay": not outcome.created, "committed": outcome.committed}


def _retry_later(chain: str, tx_hash: str, sender: str | None, attempt: int,
                 *, reason: str) -> dict[str, Any]:
    from django_q.models import Schedule
    from django_q.tasks import schedule

    if attempt > len(HINT_RETRY_DELAYS_SECONDS):
        audit_record(event_type="payment_hint_abandoned", actor="payment:webhook",
                     entity_type="payment", entity_id=tx_hash[:64],
                     details={"chain": chain, "sender": sender, "attempts": attempt,
                              "reason": reason})
        logger.error("payment hint abandoned", extra={"chain": chain, "tx_hash": tx_hash})
        return {"status": "abandoned", "reason": reason}
    delay = HINT_RETRY_DELAYS_SECONDS[attempt - 1]
    # django-q2 has no delayed enqueue: a one-off schedule is its way to run a task later.
    schedule("settlement.tasks.payment_hint_process", chain, tx_hash, sender,
             attempt=attempt + 1, schedule_type=Schedule.ONCE, repeats=-1,
             next_run=timezone.now() + timedelta(seconds=delay))
    return {"status": "retry_scheduled", "reason": reason, "attempt": attempt,
            "delay_seconds": delay}


def stellar_watch() -> dict[str, Any]:
    """The periodic Stellar watcher run (see settlement.watchers)."""
    return asdict(stellar_watch_once())
