"""Tasks the e2e tests enqueue for the real worker process (importable by qcluster)."""

from __future__ import annotations

import time

from django.db import transaction

from quotes.services.transitions import quote_transition


def walk_quote_to_executed(quote_id: str) -> None:
    """Moves a committed quote through executing → executed in separate transactions."""
    for status in ("executing", "executed"):
        with transaction.atomic():
            quote_transition(quote_id=quote_id, to_status=status, actor="e2e-worker")
        time.sleep(0.05)
