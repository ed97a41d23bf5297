"""Queueing the executor for committed quotes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from config.tasks import enqueue_with_transaction

EXECUTE_TASK = "execution.tasks.execute_quote"


def execution_enqueue(quote_ids: Iterable[Any]) -> None:
    """Queue `execute_quote` for each quote, tied to the caller's transaction (see
    config.tasks). The queue is at-least-once; the execution's UNIQUE(quote) makes a second
    delivery harmless."""
    for quote_id in quote_ids:
        enqueue_with_transaction(EXECUTE_TASK, str(quote_id),
                                 task_name=f"execute_quote:{quote_id}", group="execution")
