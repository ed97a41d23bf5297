"""The execution state machine: the one function that changes an execution's status.

    pending → signed → submitted → confirmed
    signed → signed          a stored attempt was never sent and its blockhash expired:
                             a new attempt replaces it
    submitted → signed       the sent attempt is provably dead (block height passed its
                             last valid height with no status): a new attempt is stored
    pending | signed | submitted → failed

Callers hold the execution's row lock (`lock_execution`) inside `transaction.atomic()`.
Every move writes an ExecutionTransition row and an audit event, and publishes the quote's
status event (with the execution summary) after commit.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from config.bulk import insert_together, update_rows
from config.errors import Conflict
from config.events import publish_after_commit
from config.transitions import refuse_unless_allowed, require_transaction
from execution.models import Execution, ExecutionStatus, ExecutionTransition
from quotes.models import Quote
from quotes.services.transitions import quote_status_event
from risk.audit import audit_event, audit_record

E = ExecutionStatus
ALLOWED: dict[str, set[str]] = {
    E.PENDING: {E.SIGNED, E.FAILED},
    E.SIGNED: {E.SIGNED, E.SUBMITTED, E.FAILED},
    E.SUBMITTED: {E.SIGNED, E.CONFIRMED, E.FAILED},
    E.CONFIRMED: set(),
    E.FAILED: set(),
}
FINAL = frozenset({E.CONFIRMED, E.FAILED})
IN_FLIGHT = frozenset({E.SIGNED, E.SUBMITTED})


class InvalidExecutionTransition(Conflict):
    code = "INVALID_STATE_TRANSITION"


def lock_execution(execution_id: Any) -> Execution:
    """Lock one execution row for the rest of the transaction."""
    return Execution.objects.select_for_update().select_related("quote").get(pk=execution_id)


def execution_transition(*, execution: Execution, to_status: str, actor: str,
                         details: dict[str, Any] | None = None, signature: str = "",
                         fields: dict[str, Any] | None = None,
                         quote: Quote | None = None) -> Execution:
    """Move a locked execution to `to_status`, saving `fields` with it, and record why."""
    require_transaction("execution_transition")
    previous = execution.status
    refuse_unless_allowed(InvalidExecutionTransition, "Execution", previous, to_status,
                          ALLOWED[previous])
    now = timezone.now()
    execution.status = to_status
    update_fields = ["status", "updated_at"]
    for name, value in (fields or {}).items():
        setattr(execution, name, value)
        update_fields.append(name)
    execution.save(update_fields=update_fields)
    ExecutionTransition.objects.create(execution=execution, from_status=previous,
                                       to_status=to_status, at=now, actor=actor,
                                       details=details or {}, signature=signature)
    quote = quote or execution.quote
    audit_record(event_type=f"execution_{to_status}", actor=actor, entity_type="execution",
                 entity_id=execution.pk, user_id=quote.user_id,
                 details={"quote_id": str(quote.pk), "from": previous, "to": to_status,
                          "signature": signature, **(details or {})})
    # The quote's own status may not move here (executing stays executing while the
    # execution is signed and sent), but clients follow the execution inside the event.
    publish_after_commit(event=quote_status_event(quote, previous=quote.status, at=now),
                         user_id=quote.user_id, quote_id=quote.pk)
    return execution


def execution_record_created(*, execution: Execution, actor: str, quote: Quote) -> None:
    """The first history row of a new execution (from nothing to pending)."""
    execution.quote = quote
    execution_records_created(executions=[execution], actor=actor)


def execution_records_created(*, executions: list[Execution], actor: str) -> None:
    """The first history rows of new executions (each with its `quote` loaded): transition
    and audit rows in one INSERT."""
    insert_together(*[
        ExecutionTransition(execution=e, from_status="", to_status=E.PENDING, actor=actor,
                            details={"quote_id": str(e.quote_id)})
        for e in executions], *[
        audit_event(event_type="execution_pending", actor=actor, entity_type="execution",
                    entity_id=e.pk, user_id=e.quote.user_id,
                    details={"quote_id": str(e.quote_id)})
        for e in executions])


def execution_transition_many(*, executions: list[Execution], to_status: str, actor: str,
                              fields: dict[Any, dict[str, Any]] | None = None,
                              details: dict[Any, dict[str, Any]] | None = None) -> None:
    """`execution_transition` for many executions the caller has locked: one UPDATE (per
    distinct set of changed columns), one INSERT of history and audit rows.

    `fields` and `details` are keyed by execution id. Each execution's `quote` must be
    loaded (the audit row names the quote and its user). Events are the caller's to
    publish: one per quote per transaction, carrying the execution's final state.
    """
    require_transaction("execution_transition_many")
    for execution in executions:
        refuse_unless_allowed(InvalidExecutionTransition, "Execution", execution.status, to_status,
                              ALLOWED[execution.status])
    if not executions:
        return
    now = timezone.now()
    fields, details = fields or {}, details or {}
    history, audits = [], []
    changed: set[str] = {"status", "updated_at"}
    for execution in executions:
        previous = execution.status
        execution.status, execution.updated_at = to_status, now
        for name, value in fields.get(execution.pk, {}).items():
            setattr(execution, name, value)
            changed.add(name)
        why = details.get(execution.pk) or {}
        signature = execution.signature
        history.append(ExecutionTransition(execution=execution, from_status=previous,
                                           to_status=to_status, at=now, actor=actor,
                                           details=why, signature=signature))
        audits.append(audit_event(
            event_type=f"execution_{to_status}", actor=actor, entity_type="execution",
            entity_id=execution.pk, user_id=execution.quote.user_id,
            details={"quote_id": str(execution.quote_id), "from": previous, "to": to_status,
                     "signature": signature, **why}))
    update_rows(Execution, {e.pk: {name: getattr(e, name) for name in changed}
                            for e in executions})
    insert_together(*history, *audits)
