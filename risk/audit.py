"""The audit log's one write path. Call it inside the transaction that makes the change,
so the audit row commits or rolls back with it."""

from __future__ import annotations

from typing import Any

from config.bulk import new_row
from config.logging import scrub
from risk.models import AuditEvent


def audit_event(*, event_type: str, actor: str, entity_type: str = "", entity_id: Any = "",
                user_id: Any = None, details: dict[str, Any] | None = None) -> AuditEvent:
    """The audit row, built and scrubbed but not saved (for callers that insert it with
    other rows in one statement)."""
    return new_row(AuditEvent, event_type=event_type, actor=actor, entity_type=entity_type,
                   entity_id=str(entity_id or ""), user_id=user_id, details=scrub(details or {}))


def audit_record(*, event_type: str, actor: str, entity_type: str = "", entity_id: Any = "",
                 user_id: Any = None, details: dict[str, Any] | None = None) -> AuditEvent:
    event = audit_event(event_type=event_type, actor=actor, entity_type=entity_type,
                        entity_id=entity_id, user_id=user_id, details=details)
    event.save(force_insert=True)
    return event

