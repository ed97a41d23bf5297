"""Users, the wallets they proved they own, sign-in challenges, API tokens, idempotency keys.

One user table serves both wallet users (API) and operators (Django admin, `is_staff`).
"""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models import Q

from config.chains import Chain


class User(AbstractUser):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # MEMO_ID for prepaid balance deposits: a uint64 below 2^63 (PostgreSQL bigint), drawn
    # from a range disjoint from quote memos (quotes use >= 10^15) so they can never collide.
    deposit_memo = models.BigIntegerField(unique=True, null=True, blank=True)
    notify_url = models.URLField(blank=True, default="")

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(deposit_memo__isnull=True)
                | Q(deposit_memo__gt=0, deposit_memo__lt=10**15),
                name="user_deposit_memo_range",
            ),
        ]


class Wallet(models.Model):
    """An address on a chain whose ownership the user proved by signature."""

    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="wallets")
    chain = models.CharField(max_length=16, choices=Chain.choices)
    address = models.CharField(max_length=128)
    public_key = models.CharField(max_length=128, blank=True, default="")
    verified_at = models.DateTimeField()

    class Meta:
        constraints = [
            # A verified address belongs to exactly one user.
            models.UniqueConstraint(fields=["chain", "address"], name="wallet_unique_address"),
        ]

    def __str__(self) -> str:
        return f"{self.chain}:{self.address}"


class WalletChallenge(models.Model):
    """A single-use sign-in message, valid for 5 minutes."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    chain = models.CharField(max_length=16, choices=Chain.choices)
    address = models.CharField(max_length=128)
    message = models.TextField()
    nonce = models.CharField(max_length=64, unique=True)
    recipient = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(expires_at__gt=models.F("created_at")),
                                   name="challenge_expires_after_creation"),
        ]
        indexes = [models.Index(fields=["expires_at"])]


class ApiToken(models.Model):
    """A bearer token. Only its SHA-256 is stored; revoking sets `revoked_at`."""

    key_hash = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)


class IdempotencyKey(models.Model):
    """IETF Idempotency-Key record: scoped per user, replayed for 24 h at least."""

    class State(models.TextChoices):
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="idempotency_keys")
    key = models.CharField(max_length=255)
    endpoint = models.CharField(max_length=255)
    request_fingerprint = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=State.choices, default=State.IN_PROGRESS)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="idempotency_key_unique_per_user"),
            models.CheckConstraint(
                condition=Q(state="in_progress") | Q(response_status__isnull=False),
                name="idempotency_completed_has_response",
            ),
        ]
        indexes = [models.Index(fields=["created_at"])]


class WebhookDelivery(models.Model):
    """One outgoing client notification (a status event POSTed to the user's notify URL)."""

    class State(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="webhook_deliveries")
    url = models.URLField()
    event = models.CharField(max_length=64)
    payload = models.JSONField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
