from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from config.admin_base import ReadOnlyAdmin
from users.models import ApiToken, IdempotencyKey, User, Wallet, WalletChallenge, WebhookDelivery


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ("username", "is_staff", "deposit_memo", "date_joined")
    search_fields = ("username", "wallets__address")


@admin.register(Wallet)
class WalletAdmin(ReadOnlyAdmin):
    list_display = ("chain", "address", "user", "verified_at")
    list_filter = ("chain",)
    search_fields = ("address",)
    list_select_related = ("user",)


@admin.register(WalletChallenge)
class WalletChallengeAdmin(ReadOnlyAdmin):
    list_display = ("chain", "address", "created_at", "expires_at", "used_at")
    list_filter = ("chain",)


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ("user", "created_at", "last_used_at", "revoked_at")
    exclude = ("key_hash",)  # even the hash stays out of the back office


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(ReadOnlyAdmin):
    list_display = ("user", "key", "endpoint", "state", "response_status", "created_at")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("user", "event", "state", "attempts", "last_status_code", "created_at")
    list_filter = ("state",)
