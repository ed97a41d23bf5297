"""Spend limits: the quote-time check (cheap, exact at each boundary) and the reservation
that consumes them in the executor's transaction, given back exactly once on failure."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import transaction
from django.utils import timezone

from quotes.models import QuoteStatus
from quotes.services.transitions import lock_quote
from risk.errors import CircuitBreakerOpen, DailyLimitExceeded, InsufficientTreasury, TransactionLimitExceeded
from risk.models import AuditEvent, DailySpending, SpendReservation, UserDailySpending
from risk.services import (
    breaker_reset,
    breaker_trip,
    risk_check_quote,
    risk_consume_execution,
    risk_release_execution,
    risk_reserve_execution,
)
from tests.factories import QuoteFactory, UserFactory

pytestmark = pytest.mark.django_db

LAMPORTS = 10**9
STROOPS = 10**7
YOCTO = 10**24


def today() -> dt.date:
    return timezone.now().astimezone(dt.UTC).date()


def spent(chain: str) -> int:
    row = DailySpending.objects.filter(chain=chain, day=today()).first()
    return int(row.amount_spent) if row else 0


def user_spent(user) -> int:
    row = UserDailySpending.objects.filter(user=user, day=today()).first()
    return int(row.amount_spent) if row else 0


def check(user, *, lamports: int, source_chain: str = "stellar", source_amount: int = STROOPS):
    risk_check_quote(user=user, lamports_spend=lamports, source_chain=source_chain,
                     source_amount=source_amount)


def reserve(quote, **kwargs):
    with transaction.atomic():
        risk_reserve_execution(quote=lock_quote(quote.pk), **kwargs)


@pytest.fixture
def quiet_volume(settings):
    """Keep the volume count out of the way of the limit under test."""
    settings.VOLUME_CHECK_INTERVAL_SECONDS = 3600


@pytest.fixture
def operator(db):
    from django.contrib.auth.models import Permission

    staff = UserFactory(is_staff=True)
    staff.user_permissions.add(Permission.objects.get(content_type__app_label="risk",
                                                      codename="reset_breaker"))
    return staff


# --- quote time -----------------------------------------------------------------------------

def test_quote_check_costs_at_most_two_queries_when_the_volume_count_is_due(
        user, settings, django_assert_max_num_queries):
    settings.VOLUME_CHECK_INTERVAL_SECONDS = 0  # count quote volume on this very call
    DailySpending.objects.create(chain="solana", day=today(), amount_spent=LAMPORTS)
    with django_assert_max_num_queries(2) as captured:
        check(user, lamports=LAMPORTS)
    assert len(captured.captured_queries) == 2


def test_quote_check_costs_one_query_between_volume_counts(user, settings,
                                                           django_assert_num_queries):
    settings.VOLUME_CHECK_INTERVAL_SECONDS = 3600
    check(user, lamports=LAMPORTS)  # warms this process's volume count
    with django_assert_num_queries(1):
        check(user, lamports=LAMPORTS)


def test_quote_refused_with_503_while_breaker_open(user, quiet_volume):
    breaker_trip(trigger="operator", reason="drill", actor="pytest")
    with pytest.raises(CircuitBreakerOpen) as refused:
        check(user, lamports=1)
    assert (refused.value.code, refused.value.status) == ("CIRCUIT_BREAKER_TRIGGERED", 503)


def test_per_transaction_limit_admits_exactly_the_limit(user, settings, quiet_volume):
    settings.PER_TRANSACTION_LIMIT_SOL = Decimal("10")
    check(user, lamports=10 * LAMPORTS)
    with pytest.raises(TransactionLimitExceeded) as refused:
        check(user, lamports=10 * LAMPORTS + 1)
    assert (refused.value.code, refused.value.status) == ("TRANSACTION_LIMIT_EXCEEDED", 400)
    assert refused.value.details["limit"] == str(10 * LAMPORTS)


def test_user_daily_limit_admits_exactly_what_is_left(user, settings, quiet_volume):
    settings.USER_DAILY_LIMIT_SOL = Decimal("20")
    UserDailySpending.objects.create(user=user, day=today(), amount_spent=15 * LAMPORTS)
    check(user, lamports=5 * LAMPORTS)
    with pytest.raises(DailyLimitExceeded) as refused:
        check(user, lamports=5 * LAMPORTS + 1)
    assert (refused.value.code, refused.value.status) == ("DAILY_LIMIT_EXCEEDED", 429)
    assert refused.value.details == {"scope": "user_daily", "asset": "SOL",
                                     "limit": str(20 * LAMPORTS),
                                     "spent_today": str(15 * LAMPORTS),
                                     "requested": str(5 * LAMPORTS + 1)}


def test_other_users_spend_does_not_count_against_mine(user, other_user, settings, quiet_volume):
    settings.USER_DAILY_LIMIT_SOL = Decimal("1")
    UserDailySpending.objects.create(user=other_user, day=today(), amount_spent=LAMPORTS)
    check(user, lamports=LAMPORTS)


def test_solana_daily_limit_admits_exactly_what_is_left(user, settings, quiet_volume):
    settings.SOLANA_DAILY_LIMIT = Decimal("100")
    DailySpending.objects.create(chain="solana", day=today(), amount_spent=95 * LAMPORTS)
    check(user, lamports=5 * LAMPORTS)
    with pytest.raises(DailyLimitExceeded) as refused:
        check(user, lamports=5 * LAMPORTS + 1)
    assert refused.value.details["scope"] == "solana_daily"


def test_yesterdays_spend_does_not_count(user, settings, quiet_volume):
    settings.SOLANA_DAILY_LIMIT = Decimal("1")
    DailySpending.objects.create(chain="solana", day=today() - dt.timedelta(days=1),
                                 amount_spent=LAMPORTS)
    check(user, lamports=LAMPORTS)


def test_stellar_daily_limit_counts_stroops_received(user, settings, quiet_volume):
    settings.STELLAR_DAILY_LIMIT = Decimal("1000000")
    limit = 1_000_000 * STROOPS
    DailySpending.objects.create(chain="stellar", day=today(), amount_spent=limit - 100)
    check(user, lamports=1, source_chain="stellar", source_amount=100)
    with pytest.raises(DailyLimitExceeded) as refused:
        check(user, lamports=1, source_chain="stellar", source_amount=101)
    assert refused.value.details["scope"] == "stellar_daily"
    assert refused.value.details["asset"] == "XLM"


def test_near_daily_limit_counts_yocto_received(user, settings, quiet_volume):
    settings.NEAR_DAILY_LIMIT = Decimal("10000")
    DailySpending.objects.create(chain="near", day=today(), amount_spent=9_999 * YOCTO)
    check(user, lamports=1, source_chain="near", source_amount=YOCTO)
    with pytest.raises(DailyLimitExceeded) as refused:
        check(user, lamports=1, source_chain="near", source_amount=YOCTO + 1)
    assert refused.value.details["scope"] == "near_daily"
    # Stellar's counter is separate: NEAR's spend does not use up its room.
    check(user, lamports=1, source_chain="stellar", source_amount=1_000_000 * STROOPS)


def test_default_limits_are_the_seeds(settings):
    from risk.selectors import risk_limits

    limits = risk_limits()
    assert limits.chain_daily == {"solana": 100 * LAMPORTS, "stellar": 1_000_000 * STROOPS,
                                  "near": 10_000 * YOCTO}


# --- execution time -----------------------------------------------------------------------

def committed_quote(**kwargs):
    return QuoteFactory(status=QuoteStatus.COMMITTED, committed_at=timezone.now(), **kwargs)


def test_reservation_consumes_every_counter_it_checks():
    quote = committed_quote()
    reserve(quote)
    assert spent("solana") == int(quote.max_lamports_spend)
    assert spent("stellar") == int(quote.total_cost)
    assert user_spent(quote.user) == int(quote.max_lamports_spend)
    reservation = SpendReservation.objects.get(quote=quote)
    assert reservation.state == "reserved"
    assert (int(reservation.lamports), int(reservation.source_amount)) == (
        int(quote.max_lamports_spend), int(quote.total_cost))
    assert DailySpending.objects.get(chain="solana", day=today()).transaction_count == 1


def test_reserving_twice_for_one_quote_counts_once():
    quote = committed_quote()
    reserve(quote)
    reserve(quote)
    assert spent("solana") == int(quote.max_lamports_spend)
    assert SpendReservation.objects.filter(quote=quote).count() == 1


@pytest.mark.parametrize(("limit_lamports", "admitted"), [(20_010_000, 2), (20_009_999, 1)])
def test_solana_daily_reservation_admits_exactly_up_to_the_limit(settings, limit_lamports,
                                                                  admitted):
    settings.SOLANA_DAILY_LIMIT = Decimal(limit_lamports) / LAMPORTS
    quotes = [committed_quote(max_lamports_spend=Decimal(10_005_000)) for _ in range(3)]
    outcomes = []
    for quote in quotes:
        try:
            reserve(quote)
            outcomes.append("reserved")
        except DailyLimitExceeded:
            outcomes.append("refused")
    assert outcomes == ["reserved"] * admitted + ["refused"] * (3 - admitted)
    assert spent("solana") == admitted * 10_005_000


def test_refusal_on_the_last_counter_undoes_the_earlier_ones(settings):
    # The user's counter is consumed last: a refusal there must roll back the chain counters.
    settings.USER_DAILY_LIMIT_SOL = Decimal("0.01")
    quote = committed_quote(max_lamports_spend=Decimal(10_005_000))
    with transaction.atomic():
        locked = lock_quote(quote.pk)
        with pytest.raises(DailyLimitExceeded) as refused:
            risk_reserve_execution(quote=locked)
        # The executor's transaction goes on (e.g. to fail the quote) and commits.
    assert refused.value.details["scope"] == "user_daily"
    assert spent("solana") == 0
    assert spent("stellar") == 0
    assert not SpendReservation.objects.filter(quote=quote).exists()


def test_per_transaction_limit_refuses_the_reservation(settings):
    settings.PER_TRANSACTION_LIMIT_SOL = Decimal("0.01")
    quote = committed_quote(max_lamports_spend=Decimal(10_000_001), treasury_outflow_lamports=0)
    with pytest.raises(TransactionLimitExceeded):
        reserve(quote)
    assert not SpendReservation.objects.exists()


def test_treasury_balance_must_cover_the_bound():
    quote = committed_quote(max_lamports_spend=Decimal(10_005_000))
    with pytest.raises(InsufficientTreasury) as refused:
        reserve(quote, treasury_balance_lamports=10_004_999)
    assert (refused.value.code, refused.value.status) == ("INSUFFICIENT_TREASURY", 503)
    reserve(quote, treasury_balance_lamports=10_005_000)
    assert spent("solana") == 10_005_000


def test_breaker_open_holds_the_execution_and_reset_lets_it_run(operator):
    quote = committed_quote()
    breaker_trip(trigger="operator", reason="drill", actor="pytest")
    with pytest.raises(CircuitBreakerOpen):
        reserve(quote)
    quote.refresh_from_db()
    assert quote.status == QuoteStatus.COMMITTED  # held, not failed
    assert not SpendReservation.objects.exists()

    breaker_reset(actor_user=operator, reason="drill over")
    reserve(quote)
    assert SpendReservation.objects.get(quote=quote).state == "reserved"


def test_release_gives_back_exactly_what_was_reserved_once():
    kept, failed = committed_quote(), committed_quote()
    reserve(kept)
    reserve(failed)
    assert risk_release_execution(quote=failed) is True
    assert risk_release_execution(quote=failed) is False
    assert spent("solana") == int(kept.max_lamports_spend)
    assert spent("stellar") == int(kept.total_cost)
    assert user_spent(failed.user) == 0
    assert DailySpending.objects.get(chain="solana", day=today()).transaction_count == 1
    assert SpendReservation.objects.get(quote=failed).state == "released"
    assert AuditEvent.objects.filter(event_type="spend_released",
                                     entity_id=str(failed.pk)).count() == 1


def test_release_counts_against_the_day_it_was_reserved_on():
    quote = committed_quote()
    reserve(quote)
    yesterday = today() - dt.timedelta(days=1)
    SpendReservation.objects.filter(quote=quote).update(day=yesterday)
    DailySpending.objects.filter(day=today()).update(day=yesterday)
    UserDailySpending.objects.filter(day=today()).update(day=yesterday)
    assert risk_release_execution(quote=quote) is True
    assert DailySpending.objects.get(chain="solana", day=yesterday).amount_spent == 0


def test_a_consumed_reservation_is_never_released():
    quote = committed_quote()
    reserve(quote)
    assert risk_consume_execution(quote=quote) is True
    assert risk_release_execution(quote=quote) is False
    assert spent("solana") == int(quote.max_lamports_spend)


def test_release_without_reservation_is_false():
    assert risk_release_execution(quote=committed_quote()) is False


def test_release_after_an_operator_zeroed_the_counters_does_not_go_negative():
    quote = committed_quote()
    reserve(quote)
    DailySpending.objects.update(amount_spent=0, transaction_count=0)
    assert risk_release_execution(quote=quote) is True
    assert spent("solana") == 0
    assert user_spent(quote.user) == 0
