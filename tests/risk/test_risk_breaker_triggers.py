"""Each circuit-breaker trigger trips exactly at its threshold and not one unit below, and a
trip leaves its marks: state, history, audit, alert, error log, degraded health."""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

import pytest
from django.db import transaction
from django.utils import timezone

from quotes.models import Quote
from risk.models import Alert, AuditEvent, CircuitBreaker, CircuitBreakerEvent, TreasuryOutflow
from risk.selectors import quote_volume_counts
from risk.services import (
    breaker_check_quote_volume,
    breaker_record_execution_outcome,
    breaker_reset,
    breaker_trip,
    breaker_trip_reconciliation_mismatch,
)
from settlement.ledger import Leg, account_code, ledger_post
from tests.factories import QuoteFactory, UserFactory

LAMPORTS = 10**9


def breaker() -> CircuitBreaker:
    return CircuitBreaker.objects.get(pk=1)


@pytest.fixture
def operator(db):
    from django.contrib.auth.models import Permission

    staff = UserFactory(is_staff=True)
    staff.user_permissions.add(Permission.objects.get(content_type__app_label="risk",
                                                      codename="reset_breaker"))
    return staff


# --- consecutive failures -------------------------------------------------------------------

@pytest.mark.django_db
def test_fifth_consecutive_failure_trips_fourth_does_not(settings):
    settings.CONSECUTIVE_FAILURE_THRESHOLD = 5
    for _ in range(4):
        breaker_record_execution_outcome(success=False)
    assert not breaker().is_open
    assert breaker().consecutive_failures == 4

    breaker_record_execution_outcome(success=False)
    state = breaker()
    assert state.is_open
    assert state.trigger == "consecutive_failures"
    assert state.opened_by == "system:consecutive_failures"
    event = CircuitBreakerEvent.objects.get(kind="tripped")
    assert event.details == {"consecutive_failures": 5, "threshold": 5}


@pytest.mark.django_db
def test_a_success_ends_the_failure_streak(settings):
    settings.CONSECUTIVE_FAILURE_THRESHOLD = 5
    for _ in range(4):
        breaker_record_execution_outcome(success=False)
    breaker_record_execution_outcome(success=True)
    for _ in range(4):
        breaker_record_execution_outcome(success=False)
    assert not breaker().is_open
    assert breaker().consecutive_failures == 4


# --- hourly outflow --------------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize(("outflow", "trips"), [(200_000_000, False), (200_000_001, True)])
def test_hourly_outflow_trips_just_above_20_percent_of_the_treasury(settings, outflow, trips):
    settings.HOURLY_OUTFLOW_THRESHOLD = Decimal("0.20")
    breaker_record_execution_outcome(success=True, outflow_lamports=outflow,
                                     treasury_balance_lamports=LAMPORTS)
    assert breaker().is_open is trips
    if trips:
        assert breaker().trigger == "hourly_outflow"
        assert CircuitBreakerEvent.objects.get().details["hourly_outflow_lamports"] == outflow


@pytest.mark.django_db
def test_hourly_outflow_adds_up_within_the_hour_and_forgets_older_outflow(settings, monkeypatch):
    settings.HOURLY_OUTFLOW_THRESHOLD = Decimal("0.20")
    now = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: now - dt.timedelta(minutes=62))
    breaker_record_execution_outcome(success=True, outflow_lamports=150_000_000,
                                     treasury_balance_lamports=100 * LAMPORTS)
    monkeypatch.setattr(timezone, "now", lambda: now)
    for _ in range(2):
        breaker_record_execution_outcome(success=True, outflow_lamports=100_000_000,
                                         treasury_balance_lamports=LAMPORTS)
    assert not breaker().is_open
    breaker_record_execution_outcome(success=True, outflow_lamports=1,
                                     treasury_balance_lamports=LAMPORTS)
    assert breaker().is_open
    assert TreasuryOutflow.objects.count() == 4


@pytest.mark.django_db
def test_hourly_outflow_uses_the_ledger_balance_when_the_caller_has_none(settings):
    settings.HOURLY_OUTFLOW_THRESHOLD = Decimal("0.20")
    ledger_post(reference="test:opening", kind="inventory_funding",
                legs=[Leg(account_code("treasury", "solana", "SOL"), "SOL", 10 * LAMPORTS),
                      Leg(account_code("inventory_funding", "solana", "SOL"), "SOL",
                          -10 * LAMPORTS)])
    breaker_record_execution_outcome(success=True, outflow_lamports=2 * LAMPORTS)
    assert not breaker().is_open
    breaker_record_execution_outcome(success=True, outflow_lamports=1)
    assert breaker().is_open


@pytest.mark.django_db
def test_outflow_is_booked_once_per_quote_and_consumes_its_reservation():
    from risk.models import SpendReservation
    from risk.services import risk_reserve_execution

    quote = QuoteFactory(status="committed", committed_at=timezone.now())
    with transaction.atomic():
        risk_reserve_execution(quote=quote)
    for _ in range(2):  # a retried task reports the same success twice
        breaker_record_execution_outcome(success=True, outflow_lamports=10_000_000, quote=quote,
                                         treasury_balance_lamports=1_000 * LAMPORTS)
    assert TreasuryOutflow.objects.filter(quote=quote).count() == 1
    assert SpendReservation.objects.get(quote=quote).state == "consumed"


@pytest.mark.django_db
def test_outflow_before_an_operator_reset_does_not_trip_again(settings, operator):
    settings.HOURLY_OUTFLOW_THRESHOLD = Decimal("0.20")
    breaker_record_execution_outcome(success=True, outflow_lamports=300_000_000,
                                     treasury_balance_lamports=LAMPORTS)
    assert breaker().is_open
    breaker_reset(actor_user=operator, reason="reviewed: planned rebalancing")
    breaker_record_execution_outcome(success=True, outflow_lamports=200_000_000,
                                     treasury_balance_lamports=LAMPORTS)
    assert not breaker().is_open
    breaker_record_execution_outcome(success=True, outflow_lamports=1,
                                     treasury_balance_lamports=LAMPORTS)
    assert breaker().is_open


# --- quote volume ----------------------------------------------------------------------------
# transaction=True: the spike trip commits on its own (see breaker._trip_committed_now).

def make_quotes(count: int, *, age: dt.timedelta) -> None:
    if not count:
        return
    user = UserFactory()
    created = timezone.now() - age
    Quote.objects.bulk_create([
        QuoteFactory.build(user=user, created_at=created,
                           expires_at=created + dt.timedelta(minutes=5))
        for _ in range(count)])


@pytest.fixture
def volume(settings):
    settings.VOLUME_SPIKE_RATIO = Decimal("2.0")
    settings.VOLUME_SPIKE_FLOOR = 5
    settings.VOLUME_CHECK_INTERVAL_SECONDS = 0
    CircuitBreaker.objects.get_or_create(pk=1)  # a previous transactional test flushed it


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("last_hour", "trips"), [(10, False), (11, True)])
def test_volume_trips_just_above_twice_the_24h_hourly_average(volume, last_hour, trips):
    make_quotes(120, age=dt.timedelta(hours=5))  # 120 in the prior 24 h: 5 an hour
    make_quotes(last_hour, age=dt.timedelta(minutes=10))
    assert quote_volume_counts() == (last_hour, 120)
    breaker_check_quote_volume()
    assert breaker().is_open is trips
    if trips:
        assert breaker().trigger == "volume_spike"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("last_hour", "trips"), [(5, False), (6, True)])
def test_a_quiet_system_trips_only_above_the_floor(volume, last_hour, trips):
    make_quotes(last_hour, age=dt.timedelta(minutes=10))  # no history at all
    breaker_check_quote_volume()
    assert breaker().is_open is trips


@pytest.mark.django_db(transaction=True)
def test_quotes_older_than_25_hours_are_not_in_the_baseline(volume):
    make_quotes(1000, age=dt.timedelta(hours=26))
    make_quotes(6, age=dt.timedelta(minutes=1))
    assert quote_volume_counts() == (6, 0)


@pytest.mark.django_db(transaction=True)
def test_volume_spike_trip_survives_the_refused_quotes_rollback(volume):
    make_quotes(6, age=dt.timedelta(minutes=10))
    with pytest.raises(RuntimeError), transaction.atomic():
        breaker_check_quote_volume()
        raise RuntimeError("the quote service refuses and rolls back")
    assert breaker().is_open
    assert CircuitBreakerEvent.objects.filter(trigger="volume_spike").count() == 1


@pytest.mark.django_db(transaction=True)
def test_volume_is_recounted_at_most_once_per_interval(volume, settings,
                                                       django_assert_num_queries):
    settings.VOLUME_CHECK_INTERVAL_SECONDS = 3600
    breaker_check_quote_volume(force=True)
    make_quotes(6, age=dt.timedelta(minutes=1))
    with django_assert_num_queries(0):
        breaker_check_quote_volume()
    assert not breaker().is_open


@pytest.mark.django_db(transaction=True)
def test_a_spike_an_operator_reset_is_not_counted_again(volume, operator):
    make_quotes(6, age=dt.timedelta(minutes=10))
    breaker_check_quote_volume()
    assert breaker().is_open
    breaker_reset(actor_user=operator, reason="marketing campaign, expected")
    breaker_check_quote_volume()
    assert not breaker().is_open


# --- reconciliation, operator, switches -------------------------------------------------------

@pytest.mark.django_db
def test_reconciliation_mismatch_trips_with_the_report():
    assert breaker_trip_reconciliation_mismatch(
        report_id="rep-42", details={"chain": "solana", "difference_lamports": 17}) is True
    state = breaker()
    assert (state.is_open, state.trigger) == (True, "reconciliation_mismatch")
    event = CircuitBreakerEvent.objects.get()
    assert event.details == {"report_id": "rep-42", "chain": "solana", "difference_lamports": 17}
    audit = AuditEvent.objects.get(event_type="circuit_breaker_tripped")
    assert audit.actor == "system:reconciliation_mismatch"
    assert audit.details["report_id"] == "rep-42"
    alert = Alert.objects.get()
    assert alert.kind == "circuit_breaker_tripped" and "rep-42" in alert.message


@pytest.mark.django_db
def test_trip_logs_the_alert_at_error_level_only_after_commit(caplog, django_capture_on_commit_callbacks):
    with caplog.at_level(logging.ERROR, logger="risk.services.alerts"):
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            breaker_trip(trigger="operator", reason="drill", actor="pytest")
        assert not [r for r in caplog.records if r.levelno == logging.ERROR]
        for callback in callbacks:
            callback()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "Circuit breaker tripped (operator): drill" in errors[0].getMessage()


@pytest.mark.django_db
def test_trip_is_idempotent_while_open():
    assert breaker_trip(trigger="operator", reason="first", actor="pytest") is True
    assert breaker_trip(trigger="operator", reason="second", actor="pytest") is False
    assert CircuitBreakerEvent.objects.count() == 1
    assert breaker().reason == "first"
    assert Alert.objects.count() == 1


@pytest.mark.django_db
def test_trip_needs_a_reason():
    from config.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        breaker_trip(trigger="operator", reason="  ", actor="pytest")
    assert not breaker().is_open


@pytest.mark.django_db
def test_disabled_breaker_ignores_automatic_triggers_but_not_operators(settings):
    settings.CIRCUIT_BREAKER_ENABLED = False
    settings.CONSECUTIVE_FAILURE_THRESHOLD = 1
    breaker_record_execution_outcome(success=False)
    breaker_trip_reconciliation_mismatch(report_id="r", details={})
    assert not breaker().is_open
    breaker_trip(trigger="operator", reason="manual stop", actor="operator:alice")
    assert breaker().is_open


@pytest.mark.django_db
def test_open_breaker_makes_health_degraded(client):
    breaker_trip(trigger="operator", reason="drill", actor="pytest")
    assert client.get("/health").json() == {"status": "degraded", "circuit_breaker_active": True}
