"""django-q2 tasks of the execution app: thin wrappers over the services.

A payment that commits its quote asks for a wake-up (`execute_waiting`, queued only when
none is pending: execution/services/wakeup.py); other paths queue `execute_quote` for one
quote. The queue may deliver either more than once, and the executor makes every extra
delivery a no-op. Both execute in batches with the other committed quotes that are waiting
(`execution/services/batch.py`).
"""

from __future__ import annotations

from execution.services.batch import execution_run_batch, execution_run_waiting
from execution.services.recovery import execution_recover_stuck, execution_resume_waiting


def execute_quote(quote_id: str) -> dict[str, str]:
    result = execution_run_batch(quote_id=quote_id, actor="task:execute_quote")
    return {"outcome": result.outcome, "execution_id": result.execution_id or "",
            "signature": result.signature, "fail_reason": result.fail_reason}


def execute_waiting(quote_id: str | None = None) -> dict[str, str]:
    """The wake-up a committed quote queues when none is pending
    (execution/services/wakeup.py): executes every committed quote waiting."""
    result = execution_run_waiting(quote_id=quote_id, actor="task:execute_waiting")
    return {"outcome": result.outcome, "execution_id": result.execution_id or "",
            "signature": result.signature, "fail_reason": result.fail_reason}


def recover_executions() -> dict[str, int]:
    return execution_recover_stuck()


def resume_waiting() -> int:
    return execution_resume_waiting()
