"""Executions of committed quotes on Solana, exactly one per quote.

Every signed transaction is an `ExecutionAttempt`, stored (signature + raw bytes + last
valid block height) and committed BEFORE it is first sent, so a retry re-sends the same
bytes and a crash can always be recovered by asking the chain about a known signature.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

from config.chains import amount_field
from quotes.models import Quote


class ExecutionStatus(models.TextChoices):
    PENDING = "pending"
    SIGNED = "signed"
    SUBMITTED = "submitted"
    CONFIRMED = "confirmed"
    FAILED = "failed"


class FailReason(models.TextChoices):
    SIMULATION_FAILED = "SIMULATION_FAILED"
    BLOCKHASH_EXPIRED = "BLOCKHASH_EXPIRED"
    INSUFFICIENT_TREASURY = "INSUFFICIENT_TREASURY"
    PROGRAM_ERROR = "PROGRAM_ERROR"
    OUTFLOW_EXCEEDS_QUOTE = "OUTFLOW_EXCEEDS_QUOTE"
    RISK_REJECTED = "RISK_REJECTED"
    CONFIRMATION_TIMEOUT = "CONFIRMATION_TIMEOUT"
    OPERATOR = "OPERATOR"
    PROGRAM_NOT_ALLOWED = "PROGRAM_NOT_ALLOWED"  # the stored work fails the allow-list now
    INVALID_TRANSACTION = "INVALID_TRANSACTION"  # cannot be built or signed as stored


class Execution(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    quote = models.OneToOneField(Quote, on_delete=models.PROTECT, related_name="execution")
    status = models.CharField(max_length=16, choices=ExecutionStatus.choices,
                              default=ExecutionStatus.PENDING)
    # The attempt that is (or may still be) live on chain.
    signature = models.CharField(max_length=128, blank=True, default="")
    attempt_count = models.PositiveIntegerField(default=0)
    slot = models.PositiveBigIntegerField(null=True, blank=True)
    fee_lamports = amount_field(null=True, blank=True)
    compute_units_consumed = models.PositiveBigIntegerField(null=True, blank=True)
    treasury_outflow_lamports = amount_field(null=True, blank=True)
    fail_reason = models.CharField(max_length=32, choices=FailReason.choices, blank=True,
                                   default="")
    error_message = models.TextField(blank=True, default="")
    needs_recovery = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(status__in=ExecutionStatus.values),
                                   name="execution_status_valid"),
            models.CheckConstraint(
                condition=~Q(status__in=["signed", "submitted", "confirmed"]) | ~Q(signature=""),
                name="execution_signature_required_once_signed",
            ),
            models.CheckConstraint(
                condition=~Q(status="confirmed") | Q(confirmed_at__isnull=False),
                name="execution_confirmed_has_time",
            ),
            models.CheckConstraint(condition=~Q(status="failed") | ~Q(fail_reason=""),
                                   name="execution_failed_has_reason"),
        ]
        indexes = [
            models.Index(fields=["status", "updated_at"]),
            models.Index(fields=["signature"]),
        ]


class ExecutionAttempt(models.Model):
    """One signed Solana transaction for an execution, stored before its first send."""

    class State(models.TextChoices):
        SIGNED = "signed"  # stored, maybe sent: could still land until its blockhash expires
        LANDED = "landed"  # the chain has it (success or program error)
        EXPIRED = "expired"  # provably dead: block height passed last_valid_block_height

    # Indexed by attempt_unique_number (execution, number).
    execution = models.ForeignKey(Execution, on_delete=models.PROTECT, related_name="attempts",
                                  db_index=False)
    number = models.PositiveIntegerField()
    signature = models.CharField(max_length=128)  # unique (Meta)
    signed_transaction = models.BinaryField()
    blockhash = models.CharField(max_length=64)
    last_valid_block_height = models.PositiveBigIntegerField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.SIGNED)
    send_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    last_sent_at = models.DateTimeField(null=True, blank=True)
    # Why an attempt is dead: its blockhash expired unseen, or it was refused before any send.
    closed_reason = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["number"]
        constraints = [
            models.UniqueConstraint(fields=["execution", "number"],
                                    name="attempt_unique_number"),
            # A constraint, not `unique=True`, which also builds an unused LIKE index.
            models.UniqueConstraint(fields=["signature"], name="attempt_unique_signature"),
            # At most one attempt per execution may be live at a time: a new one is signed
            # only after the previous one is provably expired.
            models.UniqueConstraint(fields=["execution"], condition=Q(state="signed"),
                                    name="attempt_one_live_per_execution"),
        ]


class ExecutionTransition(models.Model):
    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="transitions")
    from_status = models.CharField(max_length=16, choices=ExecutionStatus.choices, blank=True)
    to_status = models.CharField(max_length=16, choices=ExecutionStatus.choices)
    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=128)
    details = models.JSONField(default=dict, blank=True)
    signature = models.CharField(max_length=128, blank=True, default="")

    class Meta:
        ordering = ["at", "id"]


class ExecutionWakeup(models.Model):
    """Whether a wake-up task (`execute_waiting`) is queued that has not yet started looking
    for committed quotes. While one is, a newly committed quote needs no task of its own:
    that wake-up's batch will find it (execution/services/wakeup.py). One row."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    pending = models.BooleanField(default=False)
    requested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="execution_wakeup_one_row")]
