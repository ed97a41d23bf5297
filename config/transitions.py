"""What every state machine here checks the same way: that it runs inside the caller's
transaction (where the row lock is held), and that the requested move is allowed."""

from __future__ import annotations

from collections.abc import Container

from django.db import transaction

from config.errors import Conflict


def require_transaction(name: str) -> None:
    """Refuse to run outside `transaction.atomic()`: the caller's lock and the write must
    commit or roll back together."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError(f"{name} must run inside transaction.atomic()")


def refuse_unless_allowed(error: type[Conflict], noun: str, previous: str, to_status: str,
                          allowed: Container[str]) -> None:
    """409 with the same message and details for every machine when the move is not allowed."""
    if to_status not in allowed:
        raise error(f"{noun} is {previous}; it cannot become {to_status}",
                    details={"status": previous, "requested": to_status})
