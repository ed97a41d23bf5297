"""Per-user access: someone else's quote id answers 404 QUOTE_NOT_FOUND, never its data, and
nothing about it changes (read, cancel and pay, through the real quote and payment routes).
"""

from __future__ import annotations

import pytest

from quotes.models import Quote, QuoteStatus, QuoteTransition
from settlement.models import FundingPayment
from tests.factories import QuoteFactory


@pytest.fixture
def quote_of_b(other_user) -> Quote:
    return QuoteFactory(user=other_user)


def assert_not_found(response) -> None:
    assert response.status_code == 404, response.content
    body = response.json()
    assert body["error_code"] == "QUOTE_NOT_FOUND"
    assert "GTREASURY" not in response.content.decode()  # none of B's quote leaks


def assert_untouched(quote: Quote) -> None:
    before = quote.updated_at
    quote.refresh_from_db()
    assert quote.status == QuoteStatus.PENDING
    assert quote.updated_at == before
    assert not QuoteTransition.objects.filter(quote=quote).exists()
    assert not FundingPayment.objects.filter(quote=quote).exists()


@pytest.mark.django_db
def test_user_a_cannot_read_user_bs_quote(api_client, quote_of_b):
    assert_not_found(api_client.get(f"/api/v1/quotes/{quote_of_b.pk}"))
    assert_untouched(quote_of_b)


@pytest.mark.django_db
def test_user_a_does_not_see_user_bs_quote_in_the_list(api_client, quote_of_b):
    response = api_client.get("/api/v1/quotes")
    assert response.status_code == 200, response.content
    assert str(quote_of_b.pk) not in response.content.decode()


@pytest.mark.django_db
def test_user_a_cannot_cancel_user_bs_quote(api_client, quote_of_b):
    assert_not_found(api_client.post(f"/api/v1/quotes/{quote_of_b.pk}/cancel", format="json"))
    assert_untouched(quote_of_b)


@pytest.mark.django_db
def test_user_a_cannot_pay_user_bs_quote(api_client, quote_of_b):
    response = api_client.post(f"/api/v1/quotes/{quote_of_b.pk}/payment",
                               {"tx_hash": "ab" * 32}, format="json")
    assert_not_found(response)
    assert_untouched(quote_of_b)


@pytest.mark.django_db
def test_an_unknown_quote_id_looks_the_same_as_someone_elses(api_client, quote_of_b):
    # Same answer for "not yours" and "does not exist": ids cannot be probed.
    foreign = api_client.get(f"/api/v1/quotes/{quote_of_b.pk}")
    unknown = api_client.get("/api/v1/quotes/00000000-0000-4000-8000-000000000000")
    assert foreign.status_code == unknown.status_code == 404

    def without_echoed_id(body: dict, quote_id: str) -> dict:
        details = {k: v for k, v in body.get("details", {}).items() if v != quote_id}
        return {**body, "details": details}

    assert without_echoed_id(foreign.json(), str(quote_of_b.pk)) == without_echoed_id(
        unknown.json(), "00000000-0000-4000-8000-000000000000")
