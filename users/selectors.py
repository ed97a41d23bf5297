"""Reads of users and their wallets."""

from __future__ import annotations

from django.db.models import QuerySet

from users.models import User, Wallet


def wallet_list(*, user: User) -> QuerySet[Wallet]:
    """The wallets `user` proved they own, oldest first."""
    return Wallet.objects.filter(user=user).order_by("verified_at", "pk")
