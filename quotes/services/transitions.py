"""The quote state machine: the one function that changes a quote's status.

    pending → committed → executing → executed
    pending → expired | cancelled
    committed | executing → failed → refund_due → refunded
    committed → pending is NOT allowed (a payment, once verified, is never un-done)

`quote_transition` locks the row (SELECT ... FOR UPDATE) inside the caller's transaction,
re-reads the status, refuses a move the table does not allow, writes the transition row
and the audit event, and publishes the WebSocket event after commit.
"""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError, connection
from django.db.models import Model
from django.utils import timezone

from config.bulk import insert_together
from config.errors import Conflict
from config.events import publish_after_commit
from config.transitions import refuse_unless_allowed, require_transaction
from quotes.models import Quote, QuoteStatus, QuoteTransition
from risk.audit import audit_event

S = QuoteStatus
ALLOWED: dict[str, set[str]] = {
    S.PENDING: {S.COMMITTED, S.EXPIRED, S.CANCELLED},
    S.COMMITTED: {S.EXECUTING, S.FAILED},
    S.EXECUTING: {S.EXECUTED, S.FAILED},
    S.FAILED: {S.REFUND_DUE},
    S.REFUND_DUE: {S.REFUNDED},
    S.EXECUTED: set(),
    S.EXPIRED: set(),
    S.CANCELLED: set(),
    S.REFUNDED: set(),
}
FINAL = {S.EXECUTED, S.EXPIRED, S.CANCELLED, S.REFUNDED}

_UNKNOWN = object()  # "not given", where None is a valid value

_TIMESTAMP_FIELD: dict[str, str] = {S.COMMITTED: "committed_at", S.EXECUTED: "executed_at"}


class InvalidTransition(Conflict):
    code = "INVALID_STATE_TRANSITION"


def lock_quote(quote_id: Any) -> Quote:
    """Lock one quote row for the rest of the transaction."""
    return Quote.objects.select_for_update().get(pk=quote_id)


def quote_transition(*, quote_id: Any, to_status: str, actor: str,
                     details: dict[str, Any] | None = None, tx_hash: str = "",
                     expected_from: set[str] | None = None,
                     quote: Quote | None = None, publish: bool = True,
                     rows: list[Model] | None = None) -> Quote:
    """Move a quote to `to_status`. Must run inside `transaction.atomic()`.

    `expected_from` narrows the allowed sources further (e.g. only `pending` may be
    committed by a payment). Pass `quote` when the caller already holds its lock,
    `publish=False` when the caller publishes the status event with its own events, and
    `rows` to have the transition and audit rows appended there for the caller to insert
    with its own before the transaction ends (`config.bulk.insert_together`).
    """
    require_transaction("quote_transition")
    if quote is None:
        quote = lock_quote(quote_id)
    previous = quote.status
    allowed = ALLOWED[previous] if expected_from is None else (
        ALLOWED[previous] if previous in expected_from else set())
    refuse_unless_allowed(InvalidTransition, "Quote", previous, to_status, allowed)
    now = timezone.now()
    quote.status, quote.updated_at = to_status, now
    stamp = _TIMESTAMP_FIELD.get(to_status)
    if stamp is not None:
        setattr(quote, stamp, now)
    _quote_row_update(quote.pk, to_status, now, stamp)
    history = [
        QuoteTransition(quote=quote, from_status=previous, to_status=to_status, at=now,
                        actor=actor, details=details or {}, tx_hash=tx_hash),
        audit_event(event_type=f"quote_{to_status}", actor=actor, entity_type="quote",
                    entity_id=quote.pk, user_id=quote.user_id,
                    details={"from": previous, "to": to_status, "tx_hash": tx_hash,
                             **(details or {})}),
    ]
    if rows is not None:
        rows.extend(history)
    else:
        insert_together(*history)
    if publish:
        publish_after_commit(event=quote_status_event(quote, previous=previous, at=now),
                             user_id=quote.user_id, quote_id=quote.pk)
    return quote


def _quote_row_update(quote_id: Any, to_status: str, now: Any, stamp: str | None) -> None:
    """The locked quote's new status (and its timestamp column) in one fixed statement:
    every payment and execution moves a quote, and `Model.save(update_fields=...)`
    compiled its UPDATE afresh each time for more CPU than PostgreSQL spent on it."""
    with connection.cursor() as cursor:
        cursor.execute(_QUOTE_UPDATES[stamp], [to_status, now, quote_id] if stamp is None
                       else [to_status, now, now, quote_id])
        if cursor.rowcount != 1:  # as save(update_fields=...) would: never guess
            raise DatabaseError(f"quote {quote_id} was not updated")


_QUOTE_UPDATES = {
    None: "UPDATE quotes_quote SET status = %s, updated_at = %s WHERE id = %s",
    "committed_at":
        "UPDATE quotes_quote SET status = %s, updated_at = %s, committed_at = %s WHERE id = %s",
    "executed_at":
        "UPDATE quotes_quote SET status = %s, updated_at = %s, executed_at = %s WHERE id = %s",
}
assert set(_QUOTE_UPDATES) == {None, *_TIMESTAMP_FIELD.values()}


def quote_transition_many(*, quotes: list[Quote], to_status: str, actor: str,
                          expected_from: set[str], details: dict[Any, dict[str, Any]],
                          tx_hashes: dict[Any, str] | None = None) -> None:
    """`quote_transition` for many quotes the caller has locked, in two statements: one
    UPDATE, one INSERT of the transition and audit rows. Every quote must be in a
    status of `expected_from` that may become `to_status`, or nothing is written.

    Events are the caller's to publish (it knows the execution each one carries).
    """
    require_transaction("quote_transition_many")
    for quote in quotes:
        refuse_unless_allowed(InvalidTransition, "Quote", quote.status, to_status,
                              ALLOWED[quote.status] if quote.status in expected_from else ())
    if not quotes:
        return
    now = timezone.now()
    hashes = tx_hashes or {}
    change: dict[str, Any] = {"status": to_status, "updated_at": now}
    if to_status in _TIMESTAMP_FIELD:
        change[_TIMESTAMP_FIELD[to_status]] = now
    updated = Quote.objects.filter(pk__in=[q.pk for q in quotes],
                                   status__in=list(expected_from)).update(**change)
    if updated != len(quotes):  # the caller's locks make this impossible; never guess
        raise InvalidTransition("A quote changed under its lock",
                                details={"expected": len(quotes), "updated": updated})
    transitions, audits = [], []
    for quote in quotes:
        previous = quote.status
        for name, value in change.items():
            setattr(quote, name, value)
        why = details.get(quote.pk) or {}
        tx_hash = hashes.get(quote.pk, "")
        transitions.append(QuoteTransition(quote=quote, from_status=previous,
                                           to_status=to_status, at=now, actor=actor,
                                           details=why, tx_hash=tx_hash))
        audits.append(audit_event(
            event_type=f"quote_{to_status}", actor=actor, entity_type="quote",
            entity_id=quote.pk, user_id=quote.user_id,
            details={"from": previous, "to": to_status, "tx_hash": tx_hash, **why}))
    insert_together(*transitions, *audits)


def quote_status_event(quote: Quote, *, previous: str | None, at: Any = None,
                       execution_summary: object = _UNKNOWN) -> dict[str, Any]:
    """The one event shape for quote status, live and on (re)connect (DESIGN.md §7).
    Pass `execution_summary` when it is already known (saves a query)."""
    return {
        "event": "quote.status",
        "quote_id": str(quote.pk),
        "status": quote.status,
        "previous": previous,
        "execution": (_execution_summary(quote) if execution_summary is _UNKNOWN
                      else execution_summary),
        "at": (at or quote.updated_at or timezone.now()).isoformat(),
    }


# A quote in these states has never had an execution (it is created in the transaction
# that moves the quote to `executing`), so its events need no look-up.
_BEFORE_EXECUTION = frozenset({S.PENDING, S.COMMITTED, S.EXPIRED, S.CANCELLED})


def _execution_summary(quote: Quote) -> dict[str, Any] | None:
    from execution.selectors import execution_summary

    if quote.status in _BEFORE_EXECUTION:
        return None
    return execution_summary(quote)
