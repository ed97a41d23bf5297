"""The Stellar watcher: books every incoming treasury payment on (fake) Horizon from a
persisted cursor, and a restart neither misses nor double counts one."""

from __future__ import annotations

import pytest
from stellar_sdk import Keypair

from risk.models import AuditEvent
from settlement.ledger import unbalanced_entries
from settlement.models import FundingPayment, JournalEntry, WatcherCursor
from settlement.watchers import STELLAR_CURSOR, stellar_watch_once
from tests.fakes._http import Reply, Request
from tests.fakes.horizon import FakeHorizon
from tests.funding.kit import TESTNET, balances, execution_tasks, stellar_envelope, stellar_quote

pytestmark = pytest.mark.django_db


class FlakyHorizon(FakeHorizon):
    """Horizon that answers 503 for chosen transaction lookups (a node hiccup mid-run)."""

    def __init__(self) -> None:
        super().__init__(TESTNET)
        self.unavailable: set[str] = set()

    def handle(self, request: Request) -> Reply:
        parts = [p for p in request.path.split("/") if p]
        if len(parts) == 2 and parts[0] == "transactions" and parts[1] in self.unavailable:
            return Reply.json(503, {"title": "Service Unavailable", "status": 503})
        return super().handle(request)


@pytest.fixture
def flaky(settings):
    with FlakyHorizon() as server:
        settings.CHAIN_MODE, settings.IS_LIVE = "live", True
        settings.STELLAR_HORIZON_URL = server.url
        yield server


def cursor() -> str:
    return WatcherCursor.objects.get(name=STELLAR_CURSOR).cursor


def test_watcher_books_payments_nobody_reported(user, treasury, payer, flaky,
                                                django_capture_on_commit_callbacks):
    quote = stellar_quote(user, treasury)
    record = flaky.add_transaction(
        stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo))

    with django_capture_on_commit_callbacks(execute=True):
        report = stellar_watch_once()

    assert (report.booked, report.stopped) == (1, "")
    payment = FundingPayment.objects.get()
    assert (payment.tx_hash, payment.source, payment.status) == (record["hash"], "watcher", "matched")
    quote.refresh_from_db()
    assert quote.status == "committed"
    assert len(execution_tasks(quote.pk)) == 1
    assert cursor() == str((record["ledger"] << 32) | (1 << 12) | 1)


def test_restart_mid_page_resumes_without_missing_or_double_counting(user, treasury, payer, flaky):
    quotes = [stellar_quote(user, treasury) for _ in range(3)]
    records = [flaky.add_transaction(stellar_envelope(payer, treasury, int(q.total_cost),
                                                      memo_id=q.payment_memo)) for q in quotes]
    flaky.unavailable = {records[1]["hash"]}  # Horizon fails on the second payment

    first_run = stellar_watch_once(page_size=2)

    assert first_run.booked == 1 and first_run.stopped.startswith("horizon unavailable")
    assert list(FundingPayment.objects.values_list("tx_hash", flat=True)) == [records[0]["hash"]]
    saved = cursor()  # persisted right after the one booked payment, in the same transaction

    # "Restart": a new run, a new Horizon client, only the database cursor carries over.
    flaky.unavailable = set()
    second_run = stellar_watch_once(page_size=2)

    assert second_run.booked == 2 and second_run.stopped == ""
    assert sorted(FundingPayment.objects.values_list("tx_hash", flat=True)) == sorted(
        r["hash"] for r in records)
    assert int(cursor()) > int(saved)
    assert JournalEntry.objects.count() == 3

    # Nothing new: nothing booked, nothing re-read as new.
    third_run = stellar_watch_once(page_size=2)
    assert (third_run.booked, third_run.hints) == (0, 0)

    # New payments after the restart are picked up exactly once.
    later = stellar_quote(user, treasury)
    flaky.add_transaction(stellar_envelope(payer, treasury, int(later.total_cost),
                                           memo_id=later.payment_memo))
    assert stellar_watch_once(page_size=2).booked == 1
    assert stellar_watch_once(page_size=2).booked == 0
    assert FundingPayment.objects.count() == 4
    total = sum(int(q.total_cost) for q in [*quotes, later])
    assert balances() == {"treasury:stellar:XLM": total, "customer_funds:stellar:XLM": -total}
    assert unbalanced_entries() == []


def test_a_lost_cursor_replays_history_without_double_counting(user, treasury, payer, flaky):
    quotes = [stellar_quote(user, treasury) for _ in range(2)]
    for q in quotes:
        flaky.add_transaction(stellar_envelope(payer, treasury, int(q.total_cost), memo_id=q.payment_memo))
    assert stellar_watch_once().booked == 2

    WatcherCursor.objects.filter(name=STELLAR_CURSOR).update(cursor="")  # e.g. restored backup
    report = stellar_watch_once()

    assert (report.booked, report.already_known) == (0, 2)
    assert FundingPayment.objects.count() == 2 and JournalEntry.objects.count() == 2


def test_payments_already_booked_by_a_door_only_move_the_cursor(api_client, user, treasury, payer, flaky):
    quote = stellar_quote(user, treasury)
    tx_hash = flaky.add_transaction(
        stellar_envelope(payer, treasury, int(quote.total_cost), memo_id=quote.payment_memo))["hash"]
    assert api_client.post(f"/api/v1/quotes/{quote.pk}/payment", {"tx_hash": tx_hash},
                           format="json").status_code == 200

    report = stellar_watch_once()

    assert (report.booked, report.already_known) == (0, 1)
    assert FundingPayment.objects.count() == 1 and JournalEntry.objects.count() == 1


def test_what_is_not_a_payment_we_can_book_is_audited_and_skipped(treasury, payer, flaky):
    from stellar_sdk import Asset

    token = flaky.add_transaction(stellar_envelope(
        payer, treasury, 5, asset=Asset("USDC", Keypair.random().public_key)))["hash"]
    unmatched = flaky.add_transaction(stellar_envelope(payer, treasury, 11, memo_id=5))["hash"]

    report = stellar_watch_once()

    assert (report.refused, report.booked) == (1, 1)
    assert AuditEvent.objects.get(event_type="payment_refused").details["reason"] == "WRONG_ASSET"
    assert AuditEvent.objects.get(event_type="payment_refused").entity_id == token
    assert FundingPayment.objects.get().tx_hash == unmatched
    assert FundingPayment.objects.get().status == "unmatched"
    assert stellar_watch_once().hints == 0  # the cursor moved past all of them


def test_sandbox_has_nothing_to_watch(settings):
    settings.CHAIN_MODE = "sandbox"
    report = stellar_watch_once()
    assert report.skipped.startswith("sandbox") and report.pages == 0


def test_a_second_concurrent_run_steps_aside(treasury, payer, flaky):
    import hashlib

    from django.db import connections

    flaky.add_transaction(stellar_envelope(payer, treasury, 11, memo_id=5))
    key = int.from_bytes(hashlib.sha256(STELLAR_CURSOR.encode()).digest()[:8], "big", signed=True)
    other = connections.create_connection("default")  # another worker's session
    try:
        with other.cursor() as c:
            c.execute("SELECT pg_try_advisory_lock(%s)", [key])
            assert c.fetchone()[0] is True
        report = stellar_watch_once()
        assert report.skipped == "another watcher run holds the lock"
        assert FundingPayment.objects.count() == 0
        with other.cursor() as c:  # the other worker finishes its run
            c.execute("SELECT pg_advisory_unlock(%s)", [key])
    finally:
        other.close()
    assert stellar_watch_once().booked == 1
