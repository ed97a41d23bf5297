"""Risk controls (spend counters, circuit breaker) and the append-only audit log."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from config.chains import Chain, amount_field


class AuditEvent(models.Model):
    """Append-only: a PostgreSQL trigger refuses UPDATE and DELETE (migration 0002)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    event_type = models.CharField(max_length=64)
    entity_type = models.CharField(max_length=32, blank=True, default="")
    entity_id = models.CharField(max_length=64, blank=True, default="")
    actor = models.CharField(max_length=128)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                             blank=True, related_name="+", db_constraint=False)
    details = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["event_type", "-created_at"]),
            models.Index(fields=["entity_type", "entity_id"]),
            models.Index(fields=["-created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.event_type} {self.entity_id}"


class DailySpending(models.Model):
    """Spend reserved per chain and UTC day, in the chain's smallest unit.

    Solana rows count the treasury's lamport outflow (fees included); Stellar and NEAR rows
    count the quoted amounts received. Reservation is a conditional UPDATE whose WHERE clause
    holds the limit, so concurrent reservations cannot overshoot it.
    """

    chain = models.CharField(max_length=16, choices=Chain.choices)
    day = models.DateField()
    amount_spent = amount_field(default=0)
    transaction_count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chain", "day"], name="daily_spending_unique_day"),
            models.CheckConstraint(condition=Q(amount_spent__gte=0),
                                   name="daily_spending_non_negative"),
        ]


class UserDailySpending(models.Model):
    """Per-user lamport outflow per UTC day (the per-user daily limit)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="daily_spending")
    day = models.DateField()
    amount_spent = amount_field(default=0)
    transaction_count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "day"], name="user_daily_spending_unique"),
            models.CheckConstraint(condition=Q(amount_spent__gte=0),
                                   name="user_daily_spending_non_negative"),
        ]


class CircuitBreaker(models.Model):
    """The breaker's current state: a single row (id=1), locked to trip or reset it."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    is_open = models.BooleanField(default=False)
    reason = models.TextField(blank=True, default="")
    trigger = models.CharField(max_length=32, blank=True, default="")
    opened_at = models.DateTimeField(null=True, blank=True)
    opened_by = models.CharField(max_length=128, blank=True, default="")
    consecutive_failures = models.PositiveIntegerField(default=0)
    # The last operator reset: outflow and quote volume are measured from here, so a reset
    # after a reviewed spike is not undone by the very spike the operator just accepted.
    reset_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(id=1), name="circuit_breaker_singleton"),
            models.CheckConstraint(condition=Q(is_open=False) | Q(opened_at__isnull=False),
                                   name="circuit_breaker_open_has_time"),
        ]
        permissions = [
            ("trip_breaker", "Can trip the circuit breaker"),
            ("reset_breaker", "Can reset the circuit breaker"),
        ]


class CircuitBreakerEvent(models.Model):
    """History of trips and resets (the seed's circuit_breaker_state table)."""

    class Kind(models.TextChoices):
        TRIPPED = "tripped"
        RESET = "reset"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    trigger = models.CharField(max_length=32, blank=True, default="")
    reason = models.TextField()
    actor = models.CharField(max_length=128)
    details = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-at"]
        constraints = [
            models.CheckConstraint(condition=~Q(reason=""), name="breaker_event_has_reason"),
        ]


class Alert(models.Model):
    """An alert raised for operators (also logged at error level and sent out if configured)."""

    kind = models.CharField(max_length=64)
    message = models.TextField()
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=128, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]



class SpendReservation(models.Model):
    """The limits one execution consumed, so a failure gives back exactly what it took, once.

    Written in the executor's transaction together with the conditional UPDATEs on the day
    counters; `state` moves reserved → released (failure) or reserved → consumed (success)
    by a conditional UPDATE, so two concurrent releases cannot both subtract.
    """

    class State(models.TextChoices):
        RESERVED = "reserved"
        RELEASED = "released"
        CONSUMED = "consumed"

    quote = models.OneToOneField("quotes.Quote", on_delete=models.PROTECT,
                                 related_name="spend_reservation")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    day = models.DateField(help_text="UTC day whose counters hold this spend")
    lamports = amount_field(help_text="Solana chain and per-user daily spend (max_lamports_spend)")
    source_chain = models.CharField(max_length=16, choices=Chain.choices)
    source_amount = amount_field(help_text="source chain daily spend (the quote's total_cost)")
    state = models.CharField(max_length=16, choices=State.choices, default=State.RESERVED)
    created_at = models.DateTimeField(default=timezone.now)
    settled_at = models.DateTimeField(null=True, blank=True,
                                      help_text="when it was released or consumed")

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(lamports__gte=0) & Q(source_amount__gte=0),
                                   name="spend_reservation_amounts_gte_0"),
            models.CheckConstraint(condition=Q(state__in=["reserved", "released", "consumed"]),
                                   name="spend_reservation_state_valid"),
            models.CheckConstraint(condition=Q(state="reserved") | Q(settled_at__isnull=False),
                                   name="spend_reservation_settled_has_time"),
        ]

    def __str__(self) -> str:
        return f"reservation {self.quote_id} ({self.state})"


class TreasuryOutflow(models.Model):
    """Lamports that actually left the treasury, one row per successful execution (at
    most one per quote). Booked together with its minute's `OutflowMinute` total."""

    quote = models.OneToOneField("quotes.Quote", on_delete=models.PROTECT, null=True, blank=True,
                                 related_name="+")
    lamports = amount_field()
    at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(lamports__gt=0), name="treasury_outflow_gt_0"),
        ]


class OutflowMinute(models.Model):
    """The treasury's outflow per UTC minute: the sum of that minute's `TreasuryOutflow`
    rows, kept as they are booked (`risk.services.breaker`).

    The hourly outflow trigger runs after every landed batch. Summing an hour of
    `TreasuryOutflow` rows there cost ~50 ms of database CPU per check at 200
    executions/s (720,000 rows); an hour of minutes is at most 61 rows."""

    minute = models.DateTimeField(primary_key=True)
    lamports = amount_field()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(lamports__gt=0), name="outflow_minute_gt_0"),
            models.CheckConstraint(condition=Q(minute__second=0), name="outflow_minute_whole"),
        ]
