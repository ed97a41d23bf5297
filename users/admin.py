"""Users, wallets and tokens in the back office, and operators' TOTP devices.

Token hashes and TOTP secrets never appear: tokens list only their metadata, and a TOTP
device shows its secret once, on the enrolment page (`admin:ops_otp_enroll`) or from
`manage.py admin_otp_enroll`, never in its admin page. A superuser can revoke (delete) a
lost device; that is audited.
"""

from __future__ import annotations

import contextlib
from typing import Any

from django.contrib import admin
from django.contrib.admin.exceptions import NotRegistered
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django_otp.plugins.otp_totp.models import TOTPDevice

from config.admin_base import IdSearchMixin, ReadOnlyAdmin, operator_actor
from risk.audit import audit_record
from users.models import ApiToken, IdempotencyKey, User, Wallet, WalletChallenge, WebhookDelivery


@admin.register(User)
class UserAdmin(IdSearchMixin, DjangoUserAdmin):
    list_display = ("username", "is_staff", "is_superuser", "deposit_memo", "wallet_count",
                    "date_joined")
    search_fields = ("username", "wallets__address")
    id_search_fields = ("id",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[User]:
        return super().get_queryset(request).annotate(wallet_count=Count("wallets"))

    @admin.display(description="wallets", ordering="wallet_count")
    def wallet_count(self, obj: Any) -> int:
        return int(obj.wallet_count)

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        audit_record(event_type="admin_user_changed" if change else "admin_user_created",
                     actor=operator_actor(request), entity_type="user", entity_id=obj.pk,
                     user_id=obj.pk, details={"fields": sorted(form.changed_data)})


@admin.register(Wallet)
class WalletAdmin(ReadOnlyAdmin):
    list_display = ("chain", "address", "user", "verified_at")
    list_filter = ("chain",)
    search_fields = ("address", "user__username")
    list_select_related = ("user",)


@admin.register(WalletChallenge)
class WalletChallengeAdmin(ReadOnlyAdmin):
    list_display = ("chain", "address", "created_at", "expires_at", "used_at")
    list_filter = ("chain",)
    search_fields = ("address",)


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ("user", "created_at", "last_used_at", "revoked_at")
    list_select_related = ("user",)
    exclude = ("key_hash",)  # even the hash stays out of the back office


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(ReadOnlyAdmin):
    list_display = ("user", "key", "endpoint", "state", "response_status", "created_at")
    list_select_related = ("user",)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("user", "event", "state", "attempts", "last_status_code", "created_at")
    list_filter = ("state",)
    list_select_related = ("user",)


# django-otp's own device admin shows the secret key on its add page: replace it.
with contextlib.suppress(NotRegistered):
    admin.site.unregister(TOTPDevice)


@admin.register(TOTPDevice)
class TOTPDeviceAdmin(ReadOnlyAdmin):
    list_display = ("user", "name", "confirmed", "created_at", "last_used_at")
    list_filter = ("confirmed",)
    list_select_related = ("user",)
    search_fields = ("user__username",)
    fields = readonly_fields = ("user", "name", "confirmed", "created_at", "last_used_at",
                                "throttling_failure_count")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    def delete_model(self, request: HttpRequest, obj: TOTPDevice) -> None:
        self._audit_revoke(request, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[TOTPDevice]) -> None:
        for device in queryset.select_related("user"):
            self._audit_revoke(request, device)
        super().delete_queryset(request, queryset)

    @staticmethod
    def _audit_revoke(request: HttpRequest, device: TOTPDevice) -> None:
        audit_record(event_type="admin_otp_revoked", actor=operator_actor(request),
                     entity_type="otp_device", entity_id=device.pk, user_id=device.user_id,
                     details={"device": device.name, "owner": device.user.get_username()})
