"""Periodic django-q2 jobs, created idempotently at start-up (`make run`) and by
`manage.py ensure_schedules`. Each app appends its jobs to SCHEDULES here."""

from __future__ import annotations

from typing import Any

# (name, dotted function path, minutes between runs)
SCHEDULES: list[tuple[str, str, int]] = [
    ("client webhook retries", "users.notifications.notify_retry_due", 1),
    ("idempotency key purge", "config.idempotency.idempotency_keys_purge", 60),
    ("sign-in challenge purge", "users.services.challenges_purge", 60),
    ("execution recovery", "execution.tasks.recover_executions", 1),
    ("resume waiting executions", "execution.tasks.resume_waiting", 1),
    ("risk checks and alert redelivery", "risk.tasks.risk_periodic_checks", 1),
    ("quote expiry", "quotes.services.quotes.quotes_expire_due", 1),
    ("price observations", "quotes.services.prices.prices_observe", 1),
    # Live mode only does work; in sandbox it returns at once (no ledger to watch).
    ("stellar payment watcher", "settlement.tasks.stellar_watch", 1),
    ("reconciliation", "settlement.tasks_books.reconcile_scheduled", 10),
    ("withdrawal payouts resume", "settlement.tasks_books.withdrawals_resume_task", 1),
    ("settlements advance", "settlement.tasks_books.settlements_advance_task", 1),
]


def schedules_ensure() -> list[str]:
    from django_q.models import Schedule

    names = []
    for name, func, minutes in SCHEDULES:
        defaults: dict[str, Any] = {"func": func, "schedule_type": Schedule.MINUTES,
                                    "minutes": minutes, "repeats": -1}
        Schedule.objects.update_or_create(name=name, defaults=defaults)
        names.append(name)
    return names
