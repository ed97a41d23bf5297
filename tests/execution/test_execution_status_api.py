"""What clients see of an execution through the API: the quote's status and, on the seed's
status route, the signature, execution time and error message."""

from __future__ import annotations

import pytest

from execution.models import Execution
from execution.tasks import execute_quote
from tests.conftest import client_for
from tests.execution.conftest import sol_quote

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_executed_quote_reports_its_signature_and_time(sandbox):
    quote, _ = sol_quote(sandbox, 1_234_000)
    execute_quote(str(quote.pk))
    execution = Execution.objects.get(quote=quote)
    client = client_for(quote.user)

    detail = client.get(f"/api/v1/quotes/{quote.pk}")
    seed = client.get(f"/status/{quote.pk}")

    assert detail.status_code == 200 and detail.json()["status"] == "executed"
    assert seed.status_code == 200
    body = seed.json()
    assert body["status"] == "executed"
    assert body["solana_signature"] == execution.signature
    assert body["executed_at"] is not None and body["error_message"] is None


def test_a_failed_quote_reports_its_error(sandbox):
    quote, _ = sol_quote(sandbox, 1_000_000, max_lamports_spend=100_000)
    execute_quote(str(quote.pk))

    body = client_for(quote.user).get(f"/status/{quote.pk}").json()

    assert body["status"] == "refund_due"
    assert "more SOL than the quote allows" in body["error_message"]
    assert body["executed_at"] is None


def test_another_users_quote_status_is_not_found(sandbox, other_user):
    quote, _ = sol_quote(sandbox, 1_000_000)
    execute_quote(str(quote.pk))

    response = client_for(other_user).get(f"/status/{quote.pk}")

    assert response.status_code == 404
    assert response.json()["error_code"] == "QUOTE_NOT_FOUND"
