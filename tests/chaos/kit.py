"""In-process helpers for the chaos tests: what the periodic jobs would do (fired now
instead of within the minute), database readers, and the figures each test reports."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from django.db.models import Count

from tests.chaos.harness import log_dir

TERMINAL = {"executed", "failed", "refund_due", "refunded", "expired", "cancelled"}


def recovery_nudge(*, older_than_seconds: float = 1.0) -> None:
    """What `make run`'s schedules do every minute, now: the worker runs the recovery of
    stuck executions, and committed quotes whose execution task was lost in a crash are
    enqueued again (the ORM broker would redeliver them itself, after its 180 s lease)."""
    from django_q.tasks import async_task

    from execution.services.recovery import execution_resume_waiting

    async_task("execution.tasks.recover_executions", task_name="chaos:recover_executions",
               group="execution")
    execution_resume_waiting(older_than_seconds=older_than_seconds)


def quote_statuses(quote_ids: list[str]) -> Counter[str]:
    from quotes.models import Quote

    return Counter(dict(Quote.objects.filter(pk__in=quote_ids).values("status")
                        .annotate(n=Count("id")).values_list("status", "n")))


def all_terminal(quote_ids: list[str]) -> bool:
    counts = quote_statuses(quote_ids)
    return sum(counts.values()) == len(quote_ids) and set(counts) <= TERMINAL


def executions_in_flight() -> dict[str, int]:
    from execution.models import Execution

    return dict(Execution.objects.exclude(status__in=["confirmed", "failed"]).values("status")
                .annotate(n=Count("id")).values_list("status", "n"))


class Clock:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self) -> float:
        return round(time.monotonic() - self.started, 2)


def report_figures(test: str, figures: dict[str, Any]) -> None:
    """Print the figures of a run and keep them in DATA_DIR/chaos-logs/figures.jsonl."""
    line = json.dumps({"test": test, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures},
                      default=str, sort_keys=True)
    print(f"\nCHAOS FIGURES {line}")
    with open(log_dir() / "figures.jsonl", "a") as out:
        out.write(line + "\n")


def main(argv: list[str]) -> int:
    """`python -m tests.chaos.kit recover`: fire the periodic recovery jobs now against the
    database in DATABASE_URL (for stacks on a database this test process does not use)."""
    import os
    import sys

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    if argv[:1] != ["recover"]:
        print("usage: python -m tests.chaos.kit recover", file=sys.stderr)
        return 2
    from execution.services.recovery import execution_recover_stuck, execution_resume_waiting

    driven = execution_recover_stuck(older_than_seconds=1.0, budget_seconds=20.0)
    enqueued = execution_resume_waiting(older_than_seconds=0.0)
    print(json.dumps({"recovered": driven, "re_enqueued": enqueued}))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
