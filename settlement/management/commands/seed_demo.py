"""Seed the sandbox: a funded demo treasury and an operator account. Safe to re-run."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from settlement.services.treasury import treasury_seed_sandbox
from users.services import operator_ensure


class Command(BaseCommand):
    help = "Create the operator account and fund the sandbox treasury (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        username = settings.DJANGO_SUPERUSER_USERNAME or "operator"
        password = settings.DJANGO_SUPERUSER_PASSWORD
        generated = not password
        created = operator_ensure(username=username,
                                  password=password or secrets.token_urlsafe(12))
        if created and generated:
            # Printed once, on the run that creates the account; only its hash is stored.
            self.stdout.write(self.style.WARNING(
                f"operator account created: {username} / {created}  (shown once; "
                "set DJANGO_SUPERUSER_USERNAME/_PASSWORD to choose your own)"))
        elif created:
            self.stdout.write(f"operator account created: {username}")
        if not settings.IS_LIVE:
            summary = treasury_seed_sandbox()
            self.stdout.write("sandbox treasury: " + ", ".join(
                f"{k}={v}" for k, v in summary.items()))
