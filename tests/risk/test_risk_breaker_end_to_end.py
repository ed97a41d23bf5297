"""The breaker as clients and operators live it, through the real quote API, the real
executor and the LiteSVM sandbox chain: open → quotes 503 and executions held (quote stays
committed, nothing sent); a wallet user cannot reset; an operator resets → the held
execution is re-enqueued by the reset hook and runs once."""

from __future__ import annotations

import base64

import pytest
from django.contrib.auth.models import Permission
from solders.keypair import Keypair
from stellar_sdk import Keypair as StellarKeypair

from execution.models import Execution
from execution.services.recovery import execution_resume_waiting
from execution.solana import spl
from execution.tasks import execute_quote
from quotes.models import Quote
from risk.models import CircuitBreaker
from tests.conftest import client_for
from tests.execution.conftest import sol_quote
from tests.factories import UserFactory, WalletFactory

pytestmark = [pytest.mark.django_db(transaction=True)]


def quote_request(chain, lamports: int) -> dict:
    ix = spl.sol_transfer(chain.treasury, Keypair().pubkey(), lamports)
    return {"source_chain": "stellar", "instructions": [{
        "program_id": str(ix.program_id),
        "accounts": [{"pubkey": str(a.pubkey), "is_signer": a.is_signer,
                      "is_writable": a.is_writable} for a in ix.accounts],
        "data_base64": base64.b64encode(bytes(ix.data)).decode()}]}


def operator_with(*codenames: str):
    staff = UserFactory(is_staff=True)
    for codename in codenames:
        staff.user_permissions.add(Permission.objects.get(content_type__app_label="risk",
                                                          codename=codename))
    return staff


@pytest.fixture
def chain(settings, solana_sandbox, monkeypatch):
    from django_q.conf import Conf

    solana_sandbox.admin.clear_faults()
    settings.PRICE_SOURCE = "fixed"
    settings.VOLUME_CHECK_INTERVAL_SECONDS = 3600  # volume is not what this test is about
    monkeypatch.setattr(Conf, "SYNC", True)  # enqueued tasks run in-process through django-q
    CircuitBreaker.objects.get_or_create(pk=1)
    yield solana_sandbox
    solana_sandbox.admin.clear_faults()


def test_open_breaker_refuses_quotes_holds_executions_until_an_operator_resets(chain):
    wallet_user = UserFactory()
    WalletFactory(user=wallet_user, chain="stellar", address=StellarKeypair.random().public_key)
    client = client_for(wallet_user)
    assert client.post("/api/v1/quotes", quote_request(chain, 10**7),
                       format="json").status_code == 201  # closed: quotes work

    held, recipient = sol_quote(chain, 2_000_000)
    tripped = client_for(operator_with("trip_breaker")).post(
        "/api/v1/ops/breaker/trip", {"reason": "incident drill"}, format="json")
    assert tripped.status_code == 200 and tripped.json()["open"] is True
    assert client.get("/health").json()["status"] == "degraded"

    # New quotes: 503 with the seed's code, nothing written.
    quotes_before = Quote.objects.count()
    refused = client.post("/api/v1/quotes", quote_request(chain, 10**7), format="json")
    assert refused.status_code == 503
    assert refused.json()["error_code"] == "CIRCUIT_BREAKER_TRIGGERED"
    assert Quote.objects.count() == quotes_before

    # The committed quote's execution waits: not failed, not sent.
    assert execute_quote(str(held.pk))["outcome"] == "waiting"
    held.refresh_from_db()
    assert held.status == "committed"
    assert not Execution.objects.filter(quote=held).exists()
    assert chain.balance(recipient) == 0
    assert execution_resume_waiting(older_than_seconds=0) == 0  # nothing resumes while open

    # A wallet user cannot reset it.
    denied = client.post("/api/v1/ops/breaker/reset", {"reason": "let me pay"}, format="json")
    assert denied.status_code == 403 and denied.json()["error_code"] == "FORBIDDEN"
    assert CircuitBreaker.objects.get(pk=1).is_open

    # An operator can; the reset hook (registered by the execution app) re-enqueues the
    # held quote after commit, and it runs exactly once.
    reset = client_for(operator_with("reset_breaker")).post(
        "/api/v1/ops/breaker/reset", {"reason": "drill over"}, format="json")
    assert reset.status_code == 200 and reset.json()["open"] is False
    held.refresh_from_db()
    assert held.status == "executed"
    assert execution_resume_waiting(older_than_seconds=0) == 0  # nothing left waiting
    held.refresh_from_db()
    assert held.status == "executed"
    assert chain.balance(recipient) == 2_000_000
    assert Execution.objects.get(quote=held).status == "confirmed"
    assert client.post("/api/v1/quotes", quote_request(chain, 10**7),
                       format="json").status_code == 201
