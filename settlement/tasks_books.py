"""django-q2 tasks of the books: reconciliation, withdrawal payouts, settlement progress.
Thin: each calls one service. The broker is at-least-once; every service here is safe to run
twice (one reconciliation at a time, payouts signed once, settlements moved under a lock)."""

from __future__ import annotations

from typing import Any

from settlement.services.reconciliation import reconcile_run
from settlement.services.refund_payouts import refund_pay_out
from settlement.services.settlements import settlements_advance
from settlement.services.withdrawals import withdrawal_execute, withdrawals_resume


def reconcile_scheduled() -> dict[str, Any]:
    report = reconcile_run(triggered_by="schedule")
    return {"report_id": report.pk, "outcome": report.outcome, "mismatches": len(report.mismatches)}


def withdrawal_execute_task(withdrawal_id: str) -> dict[str, str]:
    withdrawal = withdrawal_execute(withdrawal_id=withdrawal_id)
    return {"withdrawal_id": str(withdrawal.pk), "status": withdrawal.status,
            "tx_hash": withdrawal.tx_hash or ""}


def withdrawals_resume_task() -> dict[str, int]:
    return withdrawals_resume()


def settlements_advance_task() -> dict[str, int]:
    return settlements_advance()


def refund_pay_out_task(refund_id: str) -> dict[str, str]:
    refund = refund_pay_out(refund_id=refund_id, actor="task:refund_pay_out")
    return {"refund_id": str(refund.pk), "status": refund.status, "tx_hash": refund.tx_hash}
