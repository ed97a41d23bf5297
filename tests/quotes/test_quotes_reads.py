"""A quote's one read (risk state, in-flight commitments, memo id, refund wallet) is a
prepared statement whose cached plan must not scan every quote as the table grows."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection

from quotes.services.quotes import _quote_reads
from tests.factories import QuoteFactory, UserFactory

pytestmark = pytest.mark.django_db

USDC = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"


def quote_scans() -> tuple[int, int]:
    """(sequential, index) scans of the quotes table so far in this transaction (a btree
    scan for `status = ANY (...)` counts once per status)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT seq_scan, COALESCE(idx_scan, 0) FROM pg_stat_xact_user_tables "
                       "WHERE relname = 'quotes_quote'")
        return cursor.fetchone()


def test_in_flight_sum_keeps_to_the_status_index_after_the_table_grows(stellar_user):
    # The worst case for a cached plan: statistics saying the table is empty (a plan
    # written in the prepared statement itself is then a full scan, kept for good).
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE quotes_quote")
    for _ in range(6):  # past the five custom plans: the generic plan is cached from here
        _quote_reads(user=stellar_user, source_chain="stellar", mints=[])
    other = UserFactory()
    QuoteFactory.create_batch(300, user=other, status="expired")
    QuoteFactory(user=other, status="committed", max_lamports_spend=Decimal(12_000_000),
                 token_outflows={USDC: "2500"})
    QuoteFactory(user=other, status="executing", max_lamports_spend=Decimal(11_000_000))

    sequential, index = quote_scans()
    reads = _quote_reads(user=stellar_user, source_chain="stellar", mints=[USDC])

    assert reads.committed_lamports == 23_000_000
    assert reads.committed_tokens == {USDC: 2500}
    assert reads.wallet_address == stellar_user.wallets.get().address
    assert quote_scans()[0] == sequential  # no full scan
    assert quote_scans()[1] > index


def test_one_statement_reads_the_risk_state_too(stellar_user, django_assert_num_queries):
    from risk.services import breaker_trip

    breaker_trip(trigger="operator", reason="drill", actor="pytest")
    with django_assert_num_queries(1):
        reads = _quote_reads(user=stellar_user, source_chain="stellar", mints=[])
    assert reads.risk.breaker_open is True
    assert (reads.risk.solana_spent, reads.risk.source_spent, reads.risk.user_spent) == (0, 0, 0)
