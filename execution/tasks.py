"""django-q2 tasks of the execution app: thin wrappers over the services.

`execute_quote` is enqueued after commit by the payment path; the queue may deliver it
more than once, and the executor makes every extra delivery a no-op. It executes its quote
in a batch with other committed quotes that are waiting (`execution/services/batch.py`).
"""

from __future__ import annotations

from execution.services.batch import execution_run_batch
from execution.services.recovery import execution_recover_stuck, execution_resume_waiting


def execute_quote(quote_id: str) -> dict[str, str]:
    result = execution_run_batch(quote_id=quote_id, actor="task:execute_quote")
    return {"outcome": result.outcome, "execution_id": result.execution_id or "",
            "signature": result.signature, "fail_reason": result.fail_reason}


def recover_executions() -> dict[str, int]:
    return execution_recover_stuck()


def resume_waiting() -> int:
    return execution_resume_waiting()
