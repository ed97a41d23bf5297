"""The audit log's one write path. Call it inside the transaction that makes the change,
so the audit row commits or rolls back with it."""

from __future__ import annotations

from typing import Any

from config.logging import scrub
from risk.models import AuditEvent


def audit_record(*, event_type: str, actor: str, entity_type: str = "", entity_id: Any = "",
                 user_id: Any = None, details: dict[str, Any] | None = None) -> AuditEvent:
    return AuditEvent.objects.create(
        event_type=event_type,
        actor=actor,
        entity_type=entity_type,
        entity_id=str(entity_id or ""),
        user_id=user_id,
        details=scrub(details or {}),
    )


def audit_record_many(records: list[dict[str, Any]]) -> None:
    """Several audit rows in one INSERT (the executor's batches). Each record takes the
    keyword arguments of `audit_record`."""
    if records:
        AuditEvent.objects.bulk_create([
            AuditEvent(event_type=r["event_type"], actor=r["actor"],
                       entity_type=r.get("entity_type", ""),
                       entity_id=str(r.get("entity_id") or ""), user_id=r.get("user_id"),
                       details=scrub(r.get("details") or {}))
            for r in records
        ])
