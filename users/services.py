"""User-side write paths."""

from __future__ import annotations

from django.db import transaction

from risk.audit import audit_record
from users.models import User


@transaction.atomic
def operator_ensure(*, username: str, password: str) -> str | None:
    """Create the staff superuser if missing. Returns the password when it was created."""
    if User.objects.filter(username=username).exists():
        return None
    User.objects.create_superuser(username=username, password=password, email="")
    audit_record(event_type="operator_created", actor="system", entity_type="user",
                 entity_id=username)
    return password
