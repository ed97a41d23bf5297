from django.contrib import admin

from config.admin_base import ReadOnlyAdmin
from risk.models import (
    Alert,
    AuditEvent,
    CircuitBreaker,
    CircuitBreakerEvent,
    DailySpending,
    UserDailySpending,
)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "event_type", "actor", "entity_type", "entity_id")
    list_filter = ("event_type", "entity_type")
    search_fields = ("entity_id", "actor")


@admin.register(CircuitBreaker)
class CircuitBreakerAdmin(ReadOnlyAdmin):
    list_display = ("is_open", "trigger", "reason", "opened_at", "opened_by")


@admin.register(CircuitBreakerEvent)
class CircuitBreakerEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "kind", "trigger", "reason", "actor")


@admin.register(DailySpending)
class DailySpendingAdmin(ReadOnlyAdmin):
    list_display = ("day", "chain", "amount_spent", "transaction_count")
    list_filter = ("chain",)


@admin.register(UserDailySpending)
class UserDailySpendingAdmin(ReadOnlyAdmin):
    list_display = ("day", "user", "amount_spent", "transaction_count")


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "message", "delivered_at")
