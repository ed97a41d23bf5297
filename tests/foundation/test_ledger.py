"""Double entry is enforced by PostgreSQL at commit; amounts round-trip at 78 digits."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.db import IntegrityError, InternalError, connection, transaction

from settlement.ledger import Leg, UnbalancedEntry, account_balance, ledger_post, unbalanced_entries
from settlement.models import JournalEntry, LedgerAccount, Posting


def _accounts():
    treasury, _ = LedgerAccount.objects.get_or_create(
        code="treasury:near:NEAR", defaults={"kind": "asset", "chain": "near", "asset": "NEAR"})
    funds, _ = LedgerAccount.objects.get_or_create(
        code="customer_funds:near:NEAR",
        defaults={"kind": "liability", "chain": "near", "asset": "NEAR"})
    return treasury, funds


@pytest.mark.django_db(transaction=True)
def test_unbalanced_entry_is_refused_at_commit():
    treasury, funds = _accounts()
    with pytest.raises(IntegrityError), transaction.atomic():
        entry = JournalEntry.objects.create(reference=f"t:{uuid.uuid4()}", kind="test")
        Posting.objects.create(entry=entry, account=treasury, asset="NEAR", amount=100)
        Posting.objects.create(entry=entry, account=funds, asset="NEAR", amount=-99)
        # Still inside the transaction: the deferred trigger has not run yet.
    assert not JournalEntry.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_balanced_entry_commits():
    treasury, funds = _accounts()
    with transaction.atomic():
        entry = JournalEntry.objects.create(reference=f"t:{uuid.uuid4()}", kind="test")
        Posting.objects.create(entry=entry, account=treasury, asset="NEAR", amount=100)
        Posting.objects.create(entry=entry, account=funds, asset="NEAR", amount=-100)
    assert unbalanced_entries() == []


@pytest.mark.django_db(transaction=True)
def test_posting_asset_must_match_account():
    treasury, funds = _accounts()
    with pytest.raises((IntegrityError, InternalError)), transaction.atomic():
        entry = JournalEntry.objects.create(reference=f"t:{uuid.uuid4()}", kind="test")
        Posting.objects.create(entry=entry, account=treasury, asset="XLM", amount=1)


@pytest.mark.django_db
def test_postings_are_append_only():
    entry = ledger_post(reference="r1", kind="test", legs=[
        Leg("treasury:near:NEAR", "NEAR", 5), Leg("customer_funds:near:NEAR", "NEAR", -5)])
    with pytest.raises((IntegrityError, InternalError)), transaction.atomic():
        Posting.objects.filter(entry=entry).update(amount=6)
    with pytest.raises((IntegrityError, InternalError)), transaction.atomic():
        entry.delete()


@pytest.mark.django_db
def test_ledger_post_refuses_unbalanced_before_writing():
    with pytest.raises(UnbalancedEntry):
        ledger_post(reference="r2", kind="test", legs=[
            Leg("treasury:near:NEAR", "NEAR", 5), Leg("customer_funds:near:NEAR", "NEAR", -4)])
    assert not JournalEntry.objects.filter(reference="r2").exists()


@pytest.mark.django_db
def test_ledger_post_is_once_per_reference():
    legs = [Leg("treasury:stellar:XLM", "XLM", 7), Leg("customer_funds:stellar:XLM", "XLM", -7)]
    first = ledger_post(reference="commit:q1", kind="quote_commit", legs=legs)
    second = ledger_post(reference="commit:q1", kind="quote_commit", legs=legs)
    assert first.pk == second.pk
    assert account_balance("treasury:stellar:XLM") == 7


@pytest.mark.django_db
@pytest.mark.parametrize("amount", [10**30 + 1, 2**64 - 1, 10**77 + 3, -(10**77 + 3)])
def test_78_digit_amounts_round_trip_exactly(amount):
    legs = [Leg("treasury:near:NEAR", "NEAR", amount), Leg("customer_funds:near:NEAR", "NEAR", -amount)]
    entry = ledger_post(reference=f"big:{amount}", kind="test", legs=legs)
    stored = Posting.objects.get(entry=entry, account__code="treasury:near:NEAR").amount
    assert stored == Decimal(amount) and int(stored) == amount
    with connection.cursor() as cursor:
        cursor.execute("SELECT amount::text FROM settlement_posting WHERE entry_id = %s AND amount = %s",
                       [entry.pk, Decimal(amount)])
        assert cursor.fetchone()[0] == str(amount)
