"""The books: double-entry ledger, funding payments, refunds, settlements, prepaid balances,
withdrawals, treasury accounts and reconciliation reports.

Ledger sign convention: a posting's amount is positive for a debit and negative for a
credit, in the smallest unit of its asset. A PostgreSQL constraint trigger, deferred to
commit, refuses any journal entry whose postings do not sum to zero per asset
(migration 0002), so an unbalanced entry cannot be committed by any code path.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from config.chains import Chain, amount_field
from execution.models import Execution
from quotes.models import Quote


class LedgerAccount(models.Model):
    class Kind(models.TextChoices):
        ASSET = "asset"  # what we hold on a chain (treasury wallets)
        LIABILITY = "liability"  # what we owe (customer funds, prepaid balances, refunds)
        REVENUE = "revenue"  # service fees earned
        EXPENSE = "expense"  # network fees paid, value delivered to recipients
        EQUITY = "equity"  # inventory funded by the owners

    code = models.CharField(max_length=160, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    chain = models.CharField(max_length=16, choices=Chain.choices)
    asset = models.CharField(max_length=64)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True,
                             blank=True, related_name="ledger_accounts")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.code


class JournalEntry(models.Model):
    """One balanced movement of value. `reference` makes each business event post once."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    reference = models.CharField(max_length=160)  # unique (Meta)
    kind = models.CharField(max_length=48)
    description = models.TextField(blank=True, default="")
    quote = models.ForeignKey(Quote, on_delete=models.PROTECT, null=True, blank=True,
                              related_name="journal_entries")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True,
                             blank=True, related_name="journal_entries")
    tx_hash = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "journal entries"
        # A constraint, not `unique=True`, which also builds a LIKE (varchar_pattern_ops)
        # index that nothing uses and every posting entry would write.
        constraints = [models.UniqueConstraint(fields=["reference"],
                                               name="journal_entry_unique_reference")]
        indexes = [models.Index(fields=["-created_at"]), models.Index(fields=["kind"])]


class Posting(models.Model):
    entry = models.ForeignKey(JournalEntry, on_delete=models.PROTECT, related_name="postings")
    # Indexed by (account, entry) below.
    account = models.ForeignKey(LedgerAccount, on_delete=models.PROTECT, related_name="postings",
                                db_index=False)
    asset = models.CharField(max_length=64)
    amount = models.DecimalField(max_digits=78, decimal_places=0)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=~Q(amount=0), name="posting_amount_non_zero"),
        ]
        indexes = [models.Index(fields=["account", "entry"])]


class TreasuryAccount(models.Model):
    """Our wallet on a chain for an asset, and what the chain said last time we looked."""

    chain = models.CharField(max_length=16, choices=Chain.choices)
    asset = models.CharField(max_length=64)
    address = models.CharField(max_length=128)
    decimals = models.PositiveSmallIntegerField()
    last_chain_balance = amount_field(null=True, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chain", "asset"], name="treasury_unique_asset"),
            models.CheckConstraint(condition=Q(last_chain_balance__isnull=True)
                                   | Q(last_chain_balance__gte=0),
                                   name="treasury_balance_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.chain}:{self.asset}"


class FundingPaymentStatus(models.TextChoices):
    RECEIVED = "received"
    MATCHED = "matched"  # committed a quote
    CREDITED = "credited"  # credited a prepaid balance
    UNMATCHED = "unmatched"  # unknown memo: waits for an operator
    UNDERPAID = "underpaid"
    OVERPAID = "overpaid"  # committed; the excess is refunded
    LATE = "late"  # arrived after the quote expired
    DUPLICATE = "duplicate"  # a second payment for an already-paid quote


class FundingPayment(models.Model):
    """A user's payment on Stellar or NEAR, as verified on chain. One row per chain tx."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    chain = models.CharField(max_length=16, choices=Chain.choices)
    tx_hash = models.CharField(max_length=128)
    status = models.CharField(max_length=16, choices=FundingPaymentStatus.choices,
                              default=FundingPaymentStatus.RECEIVED)
    quote = models.ForeignKey(Quote, on_delete=models.PROTECT, null=True, blank=True,
                              related_name="funding_payments")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True,
                             blank=True, related_name="funding_payments")
    asset = models.CharField(max_length=16)
    amount = amount_field()
    from_address = models.CharField(max_length=128)
    to_address = models.CharField(max_length=128)
    memo_type = models.CharField(max_length=8, blank=True, default="")
    memo = models.CharField(max_length=128, blank=True, default="")
    source = models.CharField(max_length=16)  # api | webhook | watcher | operator
    chain_details = models.JSONField(default=dict, blank=True)
    chain_time = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chain", "tx_hash"], name="funding_payment_unique_tx"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="funding_payment_amount_gt_0"),
            models.CheckConstraint(condition=Q(chain__in=["stellar", "near"]),
                                   name="funding_payment_source_chain"),
            models.CheckConstraint(
                condition=~Q(status__in=["matched", "overpaid"]) | Q(quote__isnull=False),
                name="funding_payment_matched_has_quote",
            ),
        ]
        # The quote's foreign key has its own index (a second one on quote was removed).
        indexes = [models.Index(fields=["status", "-received_at"])]


class RefundStatus(models.TextChoices):
    DUE = "due"
    APPROVED = "approved"
    SENT = "sent"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Refund(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    status = models.CharField(max_length=16, choices=RefundStatus.choices,
                              default=RefundStatus.DUE)
    reason = models.CharField(max_length=32)  # underpaid | overpaid | late | duplicate | ...
    chain = models.CharField(max_length=16, choices=Chain.choices)
    asset = models.CharField(max_length=16)
    amount = amount_field()
    destination = models.CharField(max_length=128)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True,
                             blank=True, related_name="refunds")
    quote = models.ForeignKey(Quote, on_delete=models.PROTECT, null=True, blank=True,
                              related_name="refunds")
    funding_payment = models.ForeignKey(FundingPayment, on_delete=models.PROTECT, null=True,
                                        blank=True, related_name="refunds")
    tx_hash = models.CharField(max_length=128, blank=True, default="")
    signed_transaction = models.TextField(blank=True, default="")
    approved_by = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="refund_amount_gt_0"),
            models.CheckConstraint(condition=~Q(destination=""), name="refund_has_destination"),
            models.CheckConstraint(condition=~Q(status="completed") | ~Q(tx_hash=""),
                                   name="refund_completed_has_tx"),
            # One refund per reason per payment: a replay cannot refund twice.
            models.UniqueConstraint(fields=["funding_payment", "reason"],
                                    condition=Q(funding_payment__isnull=False),
                                    name="refund_unique_per_payment_reason"),
        ]
        permissions = [("approve_refund", "Can approve and send refunds")]
        indexes = [models.Index(fields=["status", "-created_at"])]


class SettlementStatus(models.TextChoices):
    PENDING = "pending"
    VERIFIED = "verified"
    SETTLED = "settled"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


class Settlement(models.Model):
    """Matches an execution with the funding it consumed; one per execution (seed 004)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    execution = models.OneToOneField(Execution, on_delete=models.PROTECT,
                                     related_name="settlement")
    funding_payment = models.ForeignKey(FundingPayment, on_delete=models.PROTECT, null=True,
                                        blank=True, related_name="settlements")
    status = models.CharField(max_length=16, choices=SettlementStatus.choices,
                              default=SettlementStatus.PENDING)
    source_chain = models.CharField(max_length=16, choices=Chain.choices)
    source_tx_hash = models.CharField(max_length=128, blank=True, default="")
    source_amount = amount_field()
    fail_reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(source_amount__gte=0),
                                   name="settlement_amount_non_negative"),
            models.CheckConstraint(condition=~Q(status="settled") | Q(settled_at__isnull=False),
                                   name="settlement_settled_has_time"),
            models.CheckConstraint(condition=~Q(status="verified") | Q(verified_at__isnull=False),
                                   name="settlement_verified_has_time"),
        ]
        indexes = [models.Index(fields=["status", "created_at"])]


class SettlementTransition(models.Model):
    settlement = models.ForeignKey(Settlement, on_delete=models.CASCADE,
                                   related_name="transitions")
    from_status = models.CharField(max_length=16, choices=SettlementStatus.choices, blank=True)
    to_status = models.CharField(max_length=16, choices=SettlementStatus.choices)
    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=128)
    details = models.JSONField(default=dict, blank=True)
    tx_hash = models.CharField(max_length=128, blank=True, default="")

    class Meta:
        ordering = ["at", "id"]


class UserBalance(models.Model):
    """A user's prepaid balance on a chain (the seed's balances table).

    A projection of the user's ledger accounts kept in the same transaction as each
    posting; reconciliation proves the two agree. CHECKs make overdraw impossible.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                             related_name="balances")
    chain = models.CharField(max_length=16, choices=Chain.choices)
    asset = models.CharField(max_length=16)
    amount = amount_field(default=0)
    locked = amount_field(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "chain"], name="user_balance_unique_chain"),
            models.CheckConstraint(condition=Q(amount__gte=0), name="user_balance_amount_gte_0"),
            models.CheckConstraint(condition=Q(locked__gte=0), name="user_balance_locked_gte_0"),
            models.CheckConstraint(condition=Q(locked__lte=F("amount")),
                                   name="user_balance_locked_lte_amount"),
        ]

    @property
    def available(self) -> int:
        return int(self.amount - self.locked)


class WithdrawalStatus(models.TextChoices):
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    SIGNED = "signed"
    SUBMITTED = "submitted"
    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"


class Withdrawal(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                             related_name="withdrawals")
    chain = models.CharField(max_length=16, choices=Chain.choices)
    asset = models.CharField(max_length=16)
    amount = amount_field()
    destination = models.CharField(max_length=128)
    status = models.CharField(max_length=20, choices=WithdrawalStatus.choices,
                              default=WithdrawalStatus.APPROVED)
    tx_hash = models.CharField(max_length=128, null=True, blank=True, unique=True)
    signed_transaction = models.TextField(blank=True, default="")
    approved_by = models.CharField(max_length=128, blank=True, default="")
    fail_reason = models.TextField(blank=True, default="")
    # The client's key for this request (Idempotency-Key or a service caller's): one
    # withdrawal per (user, key), so a retried request cannot pay out twice.
    request_key = models.CharField(max_length=255, blank=True, default="")
    # What the payout costs the treasury in network fees (booked at completion).
    network_fee = amount_field(null=True, blank=True)
    # Signing parameters (sequence / nonce, validity window) and submission outcomes.
    chain_details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="withdrawal_amount_gt_0"),
            models.UniqueConstraint(fields=["user", "request_key"], condition=~Q(request_key=""),
                                    name="withdrawal_unique_request_key"),
            models.CheckConstraint(condition=~Q(status="completed") | Q(completed_at__isnull=False),
                                   name="withdrawal_completed_has_time"),
            models.CheckConstraint(condition=Q(network_fee__isnull=True) | Q(network_fee__gte=0),
                                   name="withdrawal_network_fee_gte_0"),
            models.CheckConstraint(condition=Q(chain__in=["stellar", "near"]),
                                   name="withdrawal_source_chain"),
            models.CheckConstraint(
                condition=~Q(status__in=["signed", "submitted", "completed"])
                | (Q(tx_hash__isnull=False) & ~Q(signed_transaction="")),
                name="withdrawal_signed_has_tx",
            ),
        ]
        permissions = [("approve_withdrawal", "Can approve large withdrawals")]
        indexes = [models.Index(fields=["status", "created_at"]),
                   models.Index(fields=["user", "-created_at"])]


class ReconciliationReport(models.Model):
    class Outcome(models.TextChoices):
        RUNNING = "running"
        OK = "ok"
        MISMATCH = "mismatch"
        ERROR = "error"

    outcome = models.CharField(max_length=16, choices=Outcome.choices,
                               default=Outcome.RUNNING)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    checks = models.JSONField(default=dict, blank=True)
    mismatches = models.JSONField(default=list, blank=True)
    triggered_by = models.CharField(max_length=128, default="schedule")

    class Meta:
        ordering = ["-started_at"]


class WatcherCursor(models.Model):
    """Where a chain watcher resumes after a restart (e.g. a Horizon paging token)."""

    name = models.CharField(max_length=64, unique=True)
    cursor = models.CharField(max_length=128, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)
