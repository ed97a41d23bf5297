"""Operators, and only operators, reset (or trip) the breaker, with a reason and an audit
trail; the public treasury document shows limits and breaker state; alerts go out signed."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Permission
from django.db import transaction

from config.webhooks import webhook_verify
from risk.models import Alert, AuditEvent, CircuitBreaker, CircuitBreakerEvent
from risk.services import breaker as breaker_module
from risk.services import breaker_on_reset, breaker_reset, breaker_trip
from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def staff_with(*codenames: str):
    staff = UserFactory(is_staff=True)
    for codename in codenames:
        staff.user_permissions.add(Permission.objects.get(content_type__app_label="risk",
                                                          codename=codename))
    return staff


def trip() -> None:
    breaker_trip(trigger="consecutive_failures", reason="5 consecutive failed executions",
                 actor="system:consecutive_failures")


def is_open() -> bool:
    return CircuitBreaker.objects.get(pk=1).is_open


# --- reset ---------------------------------------------------------------------------------

def test_operator_resets_through_the_api_and_it_is_audited():
    trip()
    operator = staff_with("reset_breaker")
    response = client_for(operator).post("/api/v1/ops/breaker/reset",
                                         {"reason": "RPC outage over, failures explained"},
                                         format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {"open": False, "reason": "", "trigger": "", "opened_at": None}
    assert not is_open()
    event = CircuitBreakerEvent.objects.get(kind="reset")
    assert (event.reason, event.actor, event.trigger) == (
        "RPC outage over, failures explained", f"operator:{operator.username}",
        "consecutive_failures")
    audit = AuditEvent.objects.get(event_type="circuit_breaker_reset")
    assert audit.user_id == operator.pk
    assert audit.details["reason"] == "RPC outage over, failures explained"
    assert audit.details["previous"]["trigger"] == "consecutive_failures"


@pytest.mark.parametrize("who", ["wallet user", "staff without permission",
                                 "non-staff with permission"])
def test_non_operators_cannot_reset(who):
    trip()
    user = {"wallet user": lambda: UserFactory(),
            "staff without permission": lambda: staff_with(),
            "non-staff with permission": lambda: UserFactory()}[who]()
    if who == "non-staff with permission":
        user.user_permissions.add(Permission.objects.get(codename="reset_breaker"))
    response = client_for(user).post("/api/v1/ops/breaker/reset", {"reason": "let me through"},
                                     format="json")
    assert response.status_code == 403
    assert response.json()["error_code"] == "FORBIDDEN"
    assert is_open()
    assert not CircuitBreakerEvent.objects.filter(kind="reset").exists()


def test_anonymous_cannot_reset(anon_client):
    trip()
    response = anon_client.post("/api/v1/ops/breaker/reset", {"reason": "x"}, format="json")
    assert response.status_code == 401
    assert is_open()


def test_reset_needs_a_reason():
    trip()
    client = client_for(staff_with("reset_breaker"))
    for body in ({}, {"reason": ""}, {"reason": "   "}):
        response = client.post("/api/v1/ops/breaker/reset", body, format="json")
        assert response.status_code == 400, body
        assert response.json()["error_code"] == "INVALID_REQUEST"
    assert is_open()


def test_service_refuses_non_staff_and_blank_reason():
    from config.errors import Forbidden, InvalidRequest

    trip()
    with pytest.raises(Forbidden):
        breaker_reset(actor_user=UserFactory(), reason="please")
    with pytest.raises(InvalidRequest):
        breaker_reset(actor_user=staff_with("reset_breaker"), reason=" ")
    assert is_open()


def test_superuser_may_reset():
    trip()
    admin = UserFactory(is_staff=True, is_superuser=True)
    breaker_reset(actor_user=admin, reason="on call decision")
    assert not is_open()


def test_resetting_a_closed_breaker_changes_nothing():
    breaker_reset(actor_user=staff_with("reset_breaker"), reason="just in case")
    assert not CircuitBreakerEvent.objects.exists()


def test_reset_hooks_run_only_after_commit(django_capture_on_commit_callbacks, monkeypatch):
    monkeypatch.setattr(breaker_module, "_reset_hooks", [])
    resumed: list[str] = []
    breaker_on_reset(lambda: resumed.append("resume held executions"))
    trip()
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        breaker_reset(actor_user=staff_with("reset_breaker"), reason="ok")
        assert resumed == []
    assert resumed == ["resume held executions"]


# --- operator trip -------------------------------------------------------------------------

def test_operator_trips_through_the_api():
    operator = staff_with("trip_breaker")
    response = client_for(operator).post("/api/v1/ops/breaker/trip",
                                         {"reason": "suspicious withdrawals"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["open"], body["trigger"], body["reason"]) == (True, "operator",
                                                              "suspicious withdrawals")
    assert CircuitBreaker.objects.get(pk=1).opened_by == f"operator:{operator.username}"
    assert AuditEvent.objects.filter(event_type="circuit_breaker_tripped").count() == 1


def test_non_operator_cannot_trip(api_client):
    response = api_client.post("/api/v1/ops/breaker/trip", {"reason": "chaos"}, format="json")
    assert response.status_code == 403
    assert not is_open()


# --- treasury document ----------------------------------------------------------------------

def test_treasury_is_public_and_shows_limits_and_breaker(anon_client, settings):
    response = anon_client.get("/api/v1/treasury")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"solana", "stellar", "near", "limits", "circuit_breaker", "mode",
                         "quote_signing_public_key"}
    assert body["solana"]["treasury"] and body["solana"]["cluster"] == settings.SOLANA_CLUSTER
    assert body["stellar"]["network_passphrase"] == settings.STELLAR_NETWORK_PASSPHRASE
    assert body["near"]["payment_account"] == settings.NEAR_PAYMENT_ACCOUNT
    assert body["mode"] == "sandbox"
    limits = body["limits"]
    assert limits["chain_daily"]["solana"]["limit"] == {"amount": "100000000000", "whole": "100",
                                                        "asset": "SOL"}
    assert limits["chain_daily"]["stellar"]["limit"]["amount"] == str(1_000_000 * 10**7)
    assert limits["chain_daily"]["near"]["limit"]["amount"] == str(10_000 * 10**24)
    assert limits["user_daily"] == {"amount": "20000000000", "whole": "20", "asset": "SOL"}
    assert limits["per_transaction"]["whole"] == "10"
    assert limits["circuit_breaker"] == {"enabled": True, "hourly_outflow_threshold": "0.20",
                                         "consecutive_failure_threshold": 5,
                                         "volume_spike_ratio": "2.0", "volume_spike_floor": 100}
    assert body["circuit_breaker"] == {"open": False, "reason": "", "trigger": "",
                                       "opened_at": None}
    from quotes.signing import service_public_key

    assert body["quote_signing_public_key"] == service_public_key()


def test_treasury_shows_todays_spend_and_an_open_breaker(anon_client):
    from risk.models import DailySpending
    from risk.selectors import utc_today

    DailySpending.objects.create(chain="solana", day=utc_today(), amount_spent=1_500_000_000)
    trip()
    body = anon_client.get("/api/v1/treasury").json()
    solana = body["limits"]["chain_daily"]["solana"]
    assert solana["spent_today"]["whole"] == "1.5"
    assert solana["remaining_today"]["amount"] == str(100 * 10**9 - 1_500_000_000)
    assert body["circuit_breaker"]["open"] is True
    assert body["circuit_breaker"]["trigger"] == "consecutive_failures"
    assert body["circuit_breaker"]["opened_at"]


# --- outgoing alert webhook -----------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_trip_sends_a_signed_alert_webhook_through_the_task_queue(httpserver, settings,
                                                                  monkeypatch):
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)  # run the enqueued task in-process, via django-q
    settings.ALERT_WEBHOOK_URL = httpserver.url_for("/alerts")
    httpserver.expect_oneshot_request("/alerts", method="POST").respond_with_data("ok")
    CircuitBreaker.objects.get_or_create(pk=1)

    with transaction.atomic():
        trip()
        assert not httpserver.log  # nothing leaves before commit

    assert len(httpserver.log) == 1
    request, _ = httpserver.log[0]
    body = request.get_data()
    assert webhook_verify(request.headers["X-Webhook-Signature"], body)
    payload = json.loads(body)
    alert = Alert.objects.get()
    assert payload["id"] == alert.pk
    assert payload["kind"] == "circuit_breaker_tripped"
    assert payload["details"]["trigger"] == "consecutive_failures"
    assert alert.delivered_at is not None


@pytest.mark.django_db(transaction=True)
def test_undelivered_alerts_are_sent_again_by_the_periodic_job(httpserver, settings):
    import datetime as dt

    from django.utils import timezone

    from risk.tasks import risk_periodic_checks

    settings.ALERT_WEBHOOK_URL = httpserver.url_for("/alerts")
    httpserver.expect_request("/alerts", method="POST").respond_with_data("ok")
    CircuitBreaker.objects.get_or_create(pk=1)
    stale = Alert.objects.create(kind="circuit_breaker_tripped", message="webhook was down",
                                 created_at=timezone.now() - dt.timedelta(minutes=5))
    assert risk_periodic_checks()["alerts_redelivered"] == 1
    stale.refresh_from_db()
    assert stale.delivered_at is not None
    assert risk_periodic_checks()["alerts_redelivered"] == 0
    assert len(httpserver.log) == 1
