from django.contrib import admin

from config.admin_base import ReadOnlyAdmin
from execution.models import Execution, ExecutionAttempt, ExecutionTransition


class AttemptInline(admin.TabularInline):
    model = ExecutionAttempt
    extra = 0
    can_delete = False
    exclude = ("signed_transaction",)
    readonly_fields = ("number", "signature", "blockhash", "last_valid_block_height", "state",
                       "send_count", "created_at", "last_sent_at")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Execution)
class ExecutionAdmin(ReadOnlyAdmin):
    list_display = ("id", "quote", "status", "signature", "fail_reason", "updated_at")
    list_filter = ("status", "fail_reason")
    search_fields = ("id", "quote__id", "signature")
    inlines = [AttemptInline]


@admin.register(ExecutionTransition)
class ExecutionTransitionAdmin(ReadOnlyAdmin):
    list_display = ("execution", "from_status", "to_status", "at", "actor")
