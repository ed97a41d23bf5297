"""The back-office pages render with real data: dashboard, lists with filters and search,
detail pages with their history and ledger entries."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from execution.models import Execution, ExecutionStatus
from quotes.models import QuoteStatus
from risk.models import DailySpending
from settlement.models import FundingPayment, Refund, Settlement, TreasuryAccount
from tests.admin.admin_kit import (
    committed_quote,
    executed_quote,
    failed_quote,
    fund_inventory,
    start_execution,
    unmatched_payment,
)
from tests.factories import QuoteFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_dashboard_shows_balances_spend_outflow_and_charts(admin_client, treasury):
    fund_inventory(sol=1_000)
    user = UserFactory()
    executed_quote(user=user, treasury=treasury)
    start_execution(committed_quote(user=user, treasury=treasury))  # in flight
    TreasuryAccount.objects.create(chain="solana", asset="SOL", address="TreasurySoLAddress1111",
                                   decimals=9, last_chain_balance=999 * 10**9,
                                   last_checked_at=timezone.now())
    DailySpending.objects.create(chain="solana", day=timezone.now().date(),
                                 amount_spent=25 * 10**9, transaction_count=3)

    response = admin_client.get(reverse("admin:ops_dashboard"))

    assert response.status_code == 200
    page = response.content.decode()
    assert "Treasury dashboard" in page
    assert "999 SOL" in page  # on-chain, as reconciliation read it
    assert "999.989995 SOL" in page  # booked: 1000 SOL inventory − the execution's spend
    assert "-0.989995 SOL" in page  # chain − books
    assert "25 SOL of 100 SOL (25.0%)" in page  # today's spend against SOLANA_DAILY_LIMIT
    assert "0.010005 SOL" in page  # in flight: the quote bound of the submitted execution
    assert "20% of the on-chain treasury balance" in page
    assert page.count('<svg class="ops-chart"') == 4  # outflow and volume, 24 h and 7 d
    assert "CLOSED" in page


def test_dashboard_is_staff_only(client, db):
    response = client.get(reverse("admin:ops_dashboard"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    client.force_login(UserFactory(is_staff=False))
    assert client.get(reverse("admin:ops_dashboard")).status_code == 302


def test_quote_detail_shows_transition_history_execution_payment_and_ledger(admin_client, treasury):
    quote = executed_quote(user=UserFactory(), treasury=treasury)
    execution = Execution.objects.get(quote=quote)
    payment = FundingPayment.objects.get(quote=quote)

    response = admin_client.get(reverse("admin:quotes_quote_change", args=[quote.pk]))

    assert response.status_code == 200
    page = response.content.decode()
    history = re.findall(r"<td>(\w+) → <b>(\w+)</b></td>", page)
    assert history == [("pending", "committed"), ("committed", "executing"), ("executing", "executed")]
    assert execution.signature in page
    assert payment.tx_hash in page
    for reference in (f"payment:stellar:{payment.tx_hash}", f"execution:{execution.pk}",
                      f"revenue:{quote.pk}"):
        assert reference in page
    assert "treasury:solana:SOL" in page and "customer_funds:stellar:XLM" in page


def test_every_list_renders_with_filters_and_search(admin_client, treasury):
    user = UserFactory()
    done = executed_quote(user=user, treasury=treasury)
    failed = failed_quote(user=user, treasury=treasury)
    held = unmatched_payment(treasury=treasury, amount=5 * 10**7)
    signature = Execution.objects.get(quote=done).signature
    pages = {
        "quotes_quote": ["?status__exact=executed", "?source_chain__exact=stellar", "?age=lt1h",
                         "?age=gt24h", f"?user={user.pk}", "?fail_reason=SIMULATION_FAILED",
                         f"?q={done.pk}", f"?q={signature}"],
        "execution_execution": ["?status__exact=failed", "?fail_reason__exact=SIMULATION_FAILED",
                                "?needs_recovery__exact=0", "?age_updated_at=1h-24h",
                                f"?q={signature}", f"?q={done.pk}"],
        "settlement_fundingpayment": ["?status__exact=unmatched", "?chain__exact=stellar",
                                      "?age_received_at=lt1h", f"?q={held.tx_hash}",
                                      f"?q={held.from_address}"],
        "settlement_refund": ["?status__exact=due", "?reason__exact=execution_failed",
                              f"?q={failed.pk}"],
        "settlement_settlement": ["?status__exact=pending", "?age=lt1h", f"?q={signature}"],
        "settlement_withdrawal": ["?status__exact=pending_approval", "?age=gt7d"],
        "risk_auditevent": ["?event_type__exact=quote_committed", f"?q={done.pk}"],
        "risk_circuitbreaker": [""],
        "risk_circuitbreakerevent": [""],
        "settlement_journalentry": [f"?q={done.pk}"],
        "settlement_ledgeraccount": [""],
    }
    for model, queries in pages.items():
        for query in ["", *queries]:
            response = admin_client.get(reverse(f"admin:{model}_changelist") + query)
            assert response.status_code == 200, (model, query)

    by_hash = admin_client.get(reverse("admin:settlement_fundingpayment_changelist") + f"?q={held.tx_hash}")
    assert by_hash.context["cl"].result_count == 1
    by_signature = admin_client.get(reverse("admin:quotes_quote_changelist") + f"?q={signature}")
    assert [q.pk for q in by_signature.context["cl"].result_list] == [done.pk]
    by_id = admin_client.get(reverse("admin:execution_execution_changelist") + f"?q={done.pk}")
    assert [e.quote_id for e in by_id.context["cl"].result_list] == [done.pk]


def test_age_filter_buckets(admin_client, db):
    now = timezone.now()
    fresh = QuoteFactory()
    old = QuoteFactory(created_at=now - dt.timedelta(hours=30), expires_at=now + dt.timedelta(minutes=5))
    url = reverse("admin:quotes_quote_changelist")

    def listed(query: str) -> set:
        return {q.pk for q in admin_client.get(url + query).context["cl"].result_list}

    assert listed("?age=lt1h") == {fresh.pk}
    assert listed("?age=gt24h") == {old.pk}
    assert listed("?age=1h-24h") == set()


def test_detail_pages_render_with_history(admin_client, treasury):
    user = UserFactory()
    done = executed_quote(user=user, treasury=treasury)
    failed = failed_quote(user=user, treasury=treasury)
    held = unmatched_payment(treasury=treasury, amount=5 * 10**7)
    execution = Execution.objects.get(quote=done)
    settlement = Settlement.objects.get(execution=execution)
    refund = Refund.objects.get(quote=failed)
    for name, obj, expected in [
        ("execution_execution", execution, "pending → <b>signed</b>"),
        ("execution_execution", Execution.objects.get(quote=failed), "custom program error: 0x1"),
        ("settlement_settlement", settlement, "∅ → <b>pending</b>"),
        ("settlement_refund", refund, "refund_due"),
        ("settlement_fundingpayment", held, "payment_unmatched"),
    ]:
        response = admin_client.get(reverse(f"admin:{name}_change", args=[obj.pk]))
        assert response.status_code == 200, name
        assert expected in response.content.decode(), name
    assert Execution.objects.get(quote=failed).status == ExecutionStatus.FAILED
    assert failed.status == QuoteStatus.REFUND_DUE
