"""Lists stay flat: a page of 30+ rows costs a fixed number of queries (no per-row query)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from settlement.services.refunds import unmatched_payment_refund
from tests.admin.admin_kit import executed_quote, failed_quote, held_withdrawal, unmatched_payment
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

ROWS = 32
# Session, user, permissions, the page's COUNT/SELECT, filter choices, breaker context...:
# whatever the page needs, but never one more per row.
MAX_QUERIES = 16

CHANGELISTS = ["quotes_quote", "quotes_quotetransition", "execution_execution",
               "execution_executiontransition", "settlement_fundingpayment", "settlement_refund",
               "settlement_settlement", "settlement_withdrawal", "settlement_journalentry",
               "settlement_ledgeraccount", "settlement_userbalance", "risk_auditevent",
               "users_user", "users_wallet"]


@pytest.fixture
def busy_books(treasury):
    users = [UserFactory() for _ in range(4)]
    for index in range(ROWS):
        executed_quote(user=users[index % 4], treasury=treasury)  # + settlement
    for index in range(ROWS // 2):
        failed_quote(user=users[index % 4], treasury=treasury)  # + refund
    for index in range(ROWS):
        payment = unmatched_payment(treasury=treasury, amount=10**7 + index, memo_id=7_000 + index)
        if index % 2:
            unmatched_payment_refund(payment_id=payment.pk, actor="test")
    for _ in range(ROWS):
        held_withdrawal(user=UserFactory(), treasury=treasury)
    return users


def test_every_changelist_has_a_fixed_query_count(admin_client, busy_books,
                                                   django_assert_max_num_queries):
    for model in CHANGELISTS:
        url = reverse(f"admin:{model}_changelist")
        with django_assert_max_num_queries(MAX_QUERIES, info=model):
            response = admin_client.get(url)
        assert response.status_code == 200
        assert len(response.context["cl"].result_list) >= 30, model


def test_query_count_does_not_grow_with_rows(admin_client, treasury):
    def queries(model: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(reverse(f"admin:{model}_changelist")).status_code == 200
        return len(captured)

    user = UserFactory()
    executed_quote(user=user, treasury=treasury)
    failed_quote(user=user, treasury=treasury)
    few = {model: queries(model) for model in CHANGELISTS}
    for _ in range(5):
        executed_quote(user=UserFactory(), treasury=treasury)
        failed_quote(user=UserFactory(), treasury=treasury)
    more = {model: queries(model) for model in CHANGELISTS}
    assert more == few
