"""Enrol a TOTP authenticator for an operator and print its otpauth:// URI, once.

The bootstrap for two-factor admin sign-in (ADMIN_OTP_REQUIRED): an operator without a
device cannot reach the admin's own enrolment page, so whoever runs the service creates
the first device here and hands the URI to the operator (scan or paste it into an
authenticator app). The device is confirmed at once; `--replace` revokes the user's
existing devices first (a lost phone).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice

from risk.audit import audit_record
from users.models import User


class Command(BaseCommand):
    help = "Create a TOTP device for a staff user and print its otpauth:// URI."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="Device name (default: '<user> authenticator')")
        parser.add_argument("--replace", action="store_true",
                            help="Delete the user's existing TOTP devices first")

    def handle(self, *args: Any, **options: Any) -> None:
        user = User.objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user named {options['username']!r}")
        if not user.is_staff:
            raise CommandError("Only staff users sign in to the admin; make the user staff first")
        with transaction.atomic():
            revoked = 0
            if options["replace"]:
                revoked, _ = TOTPDevice.objects.filter(user=user).delete()
            device = TOTPDevice.objects.create(
                user=user, name=options["name"] or f"{user.get_username()} authenticator",
                confirmed=True)
            audit_record(event_type="admin_otp_enrolled", actor="cli:admin_otp_enroll",
                         entity_type="otp_device", entity_id=device.pk, user_id=user.pk,
                         details={"device": device.name, "revoked_devices": revoked})
        self.stdout.write(device.config_url)
