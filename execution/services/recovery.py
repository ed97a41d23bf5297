"""Picking up work a crash or a closed circuit breaker left behind.

`execution_recover_stuck` finds executions in `signed`/`submitted` (and `pending` ones
whose quote is already `executing`, i.e. their spend is reserved) that have not moved for
a grace period, and drives each to a final state, asking the chain about the stored
signature first. It runs on worker start-up (`manage.py recover_executions`, called by
`make run` before the worker starts) and every minute (config/schedules.py).

`execution_resume_waiting` re-enqueues committed quotes that have no execution: those that
waited while the circuit breaker was open, and any whose after-commit enqueue was lost.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from execution.models import Execution, ExecutionStatus
from execution.services.enqueue import execution_enqueue
from execution.services.executor import ACTOR, execution_drive
from quotes.models import Quote, QuoteStatus
from risk.selectors import breaker_is_open

logger = logging.getLogger(__name__)

RECOVERY_ACTOR = "system:recovery"
RECOVERY_DRIVE_SECONDS = 30.0


def stuck_executions(*, older_than_seconds: float, limit: int) -> list[Any]:
    """Ids of unfinished executions untouched for `older_than_seconds` (or flagged
    `needs_recovery`), oldest first.

    SKIP LOCKED passes over rows a live worker is writing right now; the advisory lease
    taken by `execution_drive` is what keeps two drivers apart afterwards.
    """
    cutoff = timezone.now() - dt.timedelta(seconds=older_than_seconds)
    with transaction.atomic():
        return list(
            Execution.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(Q(status__in=[ExecutionStatus.SIGNED, ExecutionStatus.SUBMITTED])
                    | Q(status=ExecutionStatus.PENDING, quote__status=QuoteStatus.EXECUTING))
            # Flagged ones (a driver gave up, or an operator asked) need not wait: a live
            # driver still holds the lease, and recovery then just finds it busy.
            .filter(Q(updated_at__lt=cutoff) | Q(needs_recovery=True))
            .order_by("updated_at")
            .values_list("pk", flat=True)[:limit]
        )


def execution_recover_stuck(*, older_than_seconds: float | None = None, limit: int = 200,
                            budget_seconds: float = 50.0) -> dict[str, int]:
    """Drive stuck executions to a final state. Returns counts by outcome."""
    grace = (settings.EXECUTION_RECOVERY_GRACE_SECONDS if older_than_seconds is None
             else older_than_seconds)
    started = time.monotonic()
    counts: dict[str, int] = {}
    for execution_id in stuck_executions(older_than_seconds=grace, limit=limit):
        if time.monotonic() - started > budget_seconds:
            counts["deferred"] = counts.get("deferred", 0) + 1
            continue
        # A node that stays silent must not hold the minute job for the whole confirmation
        # window: what is still unresolved is simply picked up again next minute.
        result = execution_drive(execution_id=execution_id, actor=RECOVERY_ACTOR,
                                 timeout_seconds=min(RECOVERY_DRIVE_SECONDS,
                                                     settings.SOLANA_CONFIRM_TIMEOUT_SECONDS))
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
        logger.info("recovery drove execution", extra={"execution_id": str(execution_id),
                                                       "outcome": result.outcome})
    return counts


def execution_resume_waiting(*, older_than_seconds: float = 30.0, limit: int = 500) -> int:
    """Re-enqueue committed quotes without an execution (none while the breaker is open)."""
    if breaker_is_open():
        return 0
    cutoff = timezone.now() - dt.timedelta(seconds=older_than_seconds)
    quote_ids = list(
        Quote.objects.filter(status=QuoteStatus.COMMITTED, execution__isnull=True,
                             committed_at__lt=cutoff)
        .order_by("committed_at").values_list("pk", flat=True)[:limit]
    )
    execution_enqueue(quote_ids)
    if quote_ids:
        logger.info("re-enqueued waiting quotes", extra={"count": len(quote_ids), "actor": ACTOR})
    return len(quote_ids)


def execution_resume_after_reset() -> int:
    """Breaker reset hook: every held quote may start now."""
    return execution_resume_waiting(older_than_seconds=0)
