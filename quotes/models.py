"""Quotes: a firm, signed, expiring price for a piece of Solana work, and their history.

Amount columns, all NUMERIC(78,0) in the smallest unit of the named asset:
- source side (stroops or yoctoNEAR): `source_amount` (the priced work, buffer included),
  `service_fee`, `gas_estimate`, and `total_cost` = their sum (the amount to pay);
- Solana side (lamports / token base units): `treasury_outflow_lamports` (SOL leaving the
  treasury to others, rent included), `fee_lamports` (base + priority fee),
  `token_outflows` ({mint: base units}) and `max_lamports_spend`, the hard bound the executor
  enforces by simulation before sending.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from config.chains import Chain, amount_field


class QuoteStatus(models.TextChoices):
    PENDING = "pending"
    COMMITTED = "committed"
    EXECUTING = "executing"
    EXECUTED = "executed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    FAILED = "failed"
    REFUND_DUE = "refund_due"
    REFUNDED = "refunded"


class MemoType(models.TextChoices):
    ID = "id"
    HASH = "hash"


class Quote(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed by (user, -created_at) below: a second index on user alone would only be
    # one more entry to write on every insert and status change.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                             related_name="quotes", db_index=False)
    status = models.CharField(max_length=16, choices=QuoteStatus.choices,
                              default=QuoteStatus.PENDING)
    source_chain = models.CharField(max_length=16, choices=Chain.choices)
    source_asset = models.CharField(max_length=16)
    destination_chain = models.CharField(max_length=16, choices=Chain.choices,
                                         default=Chain.SOLANA)

    source_amount = amount_field()
    service_fee = amount_field()
    gas_estimate = amount_field()
    total_cost = amount_field()

    destination_amount = amount_field(help_text="lamports the treasury spends: outflow + fees")
    treasury_outflow_lamports = amount_field(default=0)
    fee_lamports = amount_field(default=0)
    token_outflows = models.JSONField(default=dict, blank=True)
    max_lamports_spend = amount_field()

    instructions = models.JSONField(help_text="normalized instruction list, treasury as payer")
    estimated_compute_units = models.PositiveIntegerField()
    priority_fee_micro_lamports = models.PositiveBigIntegerField(default=0)

    price_snapshot = models.JSONField(default=dict)
    nonce = models.CharField(max_length=64)  # unique (Meta)
    expires_at = models.DateTimeField()

    payment_address = models.CharField(max_length=128)
    payment_memo_type = models.CharField(max_length=8, choices=MemoType.choices)
    payment_memo = models.CharField(max_length=64)
    refund_to = models.CharField(max_length=128)
    pay_from_balance = models.BooleanField(default=False)
    service_signature = models.CharField(max_length=128, blank=True, default="")

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    committed_at = models.DateTimeField(null=True, blank=True)
    executed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(destination_chain="solana"),
                                   name="quote_destination_must_be_solana"),
            models.CheckConstraint(condition=~Q(source_chain="solana"),
                                   name="quote_source_not_solana"),
            models.CheckConstraint(condition=Q(source_chain__in=["stellar", "near"]),
                                   name="quote_source_chain_known"),
            models.CheckConstraint(condition=Q(status__in=QuoteStatus.values),
                                   name="quote_status_valid"),
            models.CheckConstraint(condition=Q(source_amount__gte=0), name="quote_source_amount_gte_0"),
            models.CheckConstraint(condition=Q(service_fee__gte=0), name="quote_service_fee_gte_0"),
            models.CheckConstraint(condition=Q(gas_estimate__gte=0), name="quote_gas_estimate_gte_0"),
            models.CheckConstraint(condition=Q(total_cost__gt=0), name="quote_total_cost_gt_0"),
            models.CheckConstraint(
                condition=Q(total_cost=F("source_amount") + F("service_fee") + F("gas_estimate")),
                name="quote_total_cost_calculation",
            ),
            models.CheckConstraint(condition=Q(destination_amount__gt=0),
                                   name="quote_destination_amount_gt_0"),
            models.CheckConstraint(condition=Q(treasury_outflow_lamports__gte=0)
                                   & Q(fee_lamports__gte=0),
                                   name="quote_lamports_gte_0"),
            models.CheckConstraint(
                condition=Q(max_lamports_spend__gte=F("treasury_outflow_lamports") + F("fee_lamports")),
                name="quote_bound_covers_outflow_and_fee",
            ),
            models.CheckConstraint(
                condition=Q(estimated_compute_units__gte=1, estimated_compute_units__lte=1_400_000),
                name="quote_compute_units_range",
            ),
            models.CheckConstraint(condition=Q(expires_at__gt=F("created_at")),
                                   name="quote_expires_after_creation"),
            # Memo ids are uint64 decimal strings; memo hashes 64 hex chars.
            models.CheckConstraint(
                condition=(Q(payment_memo_type="id") & Q(payment_memo__regex=r"^[0-9]{1,20}$"))
                | (Q(payment_memo_type="hash") & Q(payment_memo__regex=r"^[0-9a-f]{64}$")),
                name="quote_payment_memo_format",
            ),
            # A deposit memo routes money to exactly one quote on its chain.
            models.UniqueConstraint(fields=["source_chain", "payment_memo"],
                                    name="quote_unique_payment_memo"),
            # As a constraint, not `unique=True`: that also builds a varchar_pattern_ops
            # index for LIKE, which nothing asks of a nonce, written at every status change.
            models.UniqueConstraint(fields=["nonce"], name="quote_unique_nonce"),
        ]
        indexes = [
            models.Index(fields=["user", "-created_at"]),
            models.Index(fields=["status", "expires_at"]),
            models.Index(fields=["-created_at"]),
            # The executor's queue: committed quotes, oldest first. Walked in order with a
            # LIMIT, so a claim reads a few entries, and the entries of quotes that moved
            # on are marked dead by the first scan that meets them (a bitmap scan of the
            # status index visited every quote committed since the last vacuum, each claim).
            models.Index(fields=["committed_at"], name="quote_committed_queue",
                         condition=Q(status="committed", pay_from_balance=False)),
        ]

    def __str__(self) -> str:
        return f"quote {self.id} ({self.status})"

    @property
    def is_expired(self) -> bool:
        return timezone.now() >= self.expires_at


class QuoteTransition(models.Model):
    """One row per quote status change: who, when, why, and the chain tx involved."""

    quote = models.ForeignKey(Quote, on_delete=models.CASCADE, related_name="transitions")
    from_status = models.CharField(max_length=16, choices=QuoteStatus.choices, blank=True)
    to_status = models.CharField(max_length=16, choices=QuoteStatus.choices)
    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=128)
    details = models.JSONField(default=dict, blank=True)
    tx_hash = models.CharField(max_length=128, blank=True, default="")

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            models.CheckConstraint(condition=~Q(from_status=F("to_status")),
                                   name="quote_transition_changes_status"),
        ]


class PriceObservation(models.Model):
    """Every oracle price we used or saw; candles for charts are aggregated from these."""

    pair = models.CharField(max_length=16)  # e.g. SOL/USD
    price = models.DecimalField(max_digits=38, decimal_places=18)
    confidence = models.DecimalField(max_digits=38, decimal_places=18)
    publish_time = models.DateTimeField()
    source = models.CharField(max_length=16)  # pyth | fixed
    observed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["pair", "publish_time"])]
        constraints = [
            # One row per price the oracle published: recorders in several processes
            # insert with ON CONFLICT DO NOTHING.
            models.UniqueConstraint(fields=["pair", "source", "publish_time"],
                                    name="price_observation_unique_publish"),
            models.CheckConstraint(condition=Q(price__gt=0), name="price_positive"),
            models.CheckConstraint(condition=Q(confidence__gte=0), name="price_confidence_gte_0"),
        ]
