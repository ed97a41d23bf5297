"""Chain watchers: find payments nobody told us about, so none is ever missed.

Stellar (live mode): page through Horizon's `/accounts/{treasury}/payments` from a
persisted paging token (WatcherCursor), verify each incoming payment by its transaction
hash and book it through `payment_record`, advancing the cursor IN THE SAME TRANSACTION as
the payment. A crash after commit resumes after that payment; a crash before commit
re-reads it, and UNIQUE(chain, tx_hash) would refuse a double booking anyway.

How it runs: a django-q2 schedule (config/schedules.py), once a minute, each run draining
every new page. django-q2's scheduler ticks every ~30 s, so "every few seconds" is not
available from it; the fast path is the webhook and the client door, and the watcher is
the safety net that guarantees completeness. `manage.py watch_payments --interval 5` runs
the same function in a loop for deployments that want lower latency. A PostgreSQL advisory
lock keeps two runs (schedule + command, or two workers) from working at once.

NEAR: plain JSON-RPC has no "transactions to account X" stream (that needs an indexer such
as NEAR Lake or a third-party API). NEAR payments therefore arrive through the doors that
name a transaction: the client's `POST /quotes/{id}/payment`, and signed webhooks, whose
hints are retried with backoff until final (settlement.tasks.payment_hint_process).

Sandbox mode has no ledger to watch: the watcher does nothing there.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.db import connection, transaction

from risk.audit import audit_record
from settlement.chains.base import ChainUnavailable, PaymentInvalid
from settlement.chains.stellar import StellarHorizonVerifier
from settlement.models import FundingPayment, WatcherCursor
from settlement.services.funding import payment_record
from settlement.verifiers import chain_mode_is_live, stellar_horizon

logger = logging.getLogger(__name__)

STELLAR_CURSOR = "stellar:treasury_payments"


@dataclass
class WatchReport:
    skipped: str = ""
    pages: int = 0
    hints: int = 0
    booked: int = 0
    already_known: int = 0
    refused: int = 0
    cursor: str = ""
    stopped: str = ""


@contextmanager
def _exclusive(name: str) -> Iterator[bool]:
    """A session-level advisory lock: held across the HTTP calls without holding a
    transaction open, released even if the run fails."""
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def _cursor_read(name: str) -> str:
    row, _ = WatcherCursor.objects.get_or_create(name=name)
    return row.cursor


def _cursor_advance(name: str, token: str) -> None:
    """Move forward only (paging tokens are increasing integers), inside the caller's tx."""
    row, _ = WatcherCursor.objects.select_for_update().get_or_create(name=name)
    try:
        forward = not row.cursor or int(token) > int(row.cursor)
    except ValueError:
        forward = token != row.cursor
    if forward:
        row.cursor = token
        row.save(update_fields=["cursor", "updated_at"])


def stellar_watch_once(*, max_pages: int = 50, page_size: int = 100) -> WatchReport:
    """Book every new incoming treasury payment on Horizon since the saved cursor."""
    report = WatchReport()
    if not chain_mode_is_live():
        report.skipped = "sandbox mode has no Stellar ledger to watch"
        return report
    with _exclusive(STELLAR_CURSOR) as acquired:
        if not acquired:
            report.skipped = "another watcher run holds the lock"
            return report
        horizon = stellar_horizon()
        try:
            _drain(horizon, report, max_pages=max_pages, page_size=page_size)
        finally:
            horizon.close()
    return report


def _drain(horizon: StellarHorizonVerifier, report: WatchReport, *, max_pages: int,
           page_size: int) -> None:
    for _ in range(max_pages):
        cursor = _cursor_read(STELLAR_CURSOR)
        report.cursor = cursor
        try:
            hints, next_cursor = horizon.poll_payments(cursor or None, limit=page_size)
        except ChainUnavailable as exc:
            report.stopped = f"horizon unavailable: {exc}"
            return
        report.pages += 1
        for hint in hints:
            report.hints += 1
            if FundingPayment.objects.filter(chain="stellar", tx_hash=hint.tx_hash).exists():
                verified = None  # already booked by a door: only the cursor moves
                report.already_known += 1
            else:
                try:
                    verified = horizon.verify_tx(hint.tx_hash)
                except ChainUnavailable as exc:
                    # Stop before this payment: the cursor stays behind it for the next run.
                    report.stopped = f"horizon unavailable: {exc}"
                    return
                except PaymentInvalid as exc:
                    # Not a payment we can book (a token, a multi-op tx, an account merge):
                    # operators see it in the audit log; the cursor moves past it.
                    verified = None
                    report.refused += 1
                    audit_record(event_type="payment_refused", actor="payment:watcher",
                                 entity_type="payment", entity_id=hint.tx_hash[:64],
                                 details={"chain": "stellar", "reason": exc.code,
                                          "message": exc.message,
                                          "paging_token": hint.paging_token})
            with transaction.atomic():
                if verified is not None:
                    outcome = payment_record(verified=verified, source="watcher")
                    if outcome.created:
                        report.booked += 1
                    else:
                        report.already_known += 1
                _cursor_advance(STELLAR_CURSOR, hint.paging_token)
            report.cursor = hint.paging_token
        if not next_cursor or next_cursor == cursor:
            return  # caught up
        with transaction.atomic():
            # Past records that were not incoming payments (outgoing, failed, other accounts).
            _cursor_advance(STELLAR_CURSOR, next_cursor)
        report.cursor = next_cursor
