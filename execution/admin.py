"""Executions in the back office: lists to find stuck and failed work, each execution's
transition history, its signed attempts (signature, blockhash, validity; never the signed
bytes) and its quote's ledger entries.

The one action, "mark for recovery", never signs or sends anything: it flags the execution
and asks the recovery job (`execution.tasks.recover_executions`) to drive it, and that job
asks the chain about the stored signature before doing anything else. Permission: the
generic `execution.change_execution` (no dedicated permission is declared for it).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest

from config.admin_base import (
    IdSearchMixin,
    ReadOnlyAdmin,
    ReadOnlyInline,
    admin_link,
    age_filter,
    amount_display,
    ledger_table,
    operator_actor,
    transitions_table,
    user_filter,
    user_list_link,
)
from config.tasks import enqueue_with_transaction
from execution.models import Execution, ExecutionAttempt, ExecutionStatus, ExecutionTransition
from risk.audit import audit_record

RECOVERY_TASK = "execution.tasks.recover_executions"
# Not final: the recovery job can still drive these (it decides by asking the chain).
RECOVERABLE = (ExecutionStatus.PENDING, ExecutionStatus.SIGNED, ExecutionStatus.SUBMITTED)


class AttemptInline(ReadOnlyInline):
    model = ExecutionAttempt
    verbose_name_plural = "signed attempts (the signed bytes are never shown)"
    fields = readonly_fields = ("number", "signature", "blockhash", "last_valid_block_height",
                                "state", "send_count", "created_at", "last_sent_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ExecutionAttempt]:
        # The signed bytes are never needed here: don't even load them.
        return super().get_queryset(request).defer("signed_transaction")


def mark_for_recovery(*, execution_id: Any, actor: str) -> bool:
    """Flag an unfinished execution for the recovery job and enqueue the job with it.
    Returns False when it is final or already flagged (nothing written)."""
    with transaction.atomic():
        flagged = Execution.objects.filter(pk=execution_id, status__in=RECOVERABLE,
                                           needs_recovery=False).update(needs_recovery=True)
        if not flagged:
            return False
        audit_record(event_type="execution_marked_for_recovery", actor=actor,
                     entity_type="execution", entity_id=execution_id,
                     details={"task": RECOVERY_TASK})
        enqueue_with_transaction(RECOVERY_TASK, task_name="recover_executions:operator",
                                 group="execution")
    return True


@admin.register(Execution)
class ExecutionAdmin(IdSearchMixin, ReadOnlyAdmin):
    list_display = ("id", "quote_link", "user_link", "status", "signature", "attempt_count",
                    "fail_reason", "needs_recovery", "updated_at")
    list_filter = ("status", "fail_reason", "needs_recovery", "quote__source_chain",
                   age_filter("updated_at", "not moved for"), age_filter("created_at"),
                   user_filter("quote__user_id"))
    search_fields = ("=signature", "=attempts__signature", "quote__user__username")
    id_search_fields = ("id", "quote__id")
    search_help_text = "Execution id, quote id, Solana signature (any attempt) or username"
    list_select_related = ("quote", "quote__user")
    show_full_result_count = False
    inlines = [AttemptInline]
    actions = ["mark_for_recovery_action"]
    fields = readonly_fields = (
        "id", "quote_link", "status", "signature", "attempt_count", "slot", "fee_display",
        "compute_units_consumed", "outflow_display", "fail_reason", "error_message",
        "needs_recovery", "created_at", "updated_at", "submitted_at", "confirmed_at",
        "history", "ledger")

    @admin.display(description="quote", ordering="quote__created_at")
    def quote_link(self, obj: Execution) -> str:
        return admin_link(obj.quote, f"{obj.quote_id} ({obj.quote.status})")

    @admin.display(description="user", ordering="quote__user__username")
    def user_link(self, obj: Execution) -> str:
        return user_list_link(self, obj.quote.user)

    @admin.display(description="fee")
    def fee_display(self, obj: Execution) -> str:
        return amount_display(obj.fee_lamports, "SOL")

    @admin.display(description="treasury outflow")
    def outflow_display(self, obj: Execution) -> str:
        return amount_display(obj.treasury_outflow_lamports, "SOL")

    @admin.display(description="transition history")
    def history(self, obj: Execution) -> str:
        return transitions_table(list(obj.transitions.order_by("at", "id")), hash_field="signature")

    @admin.display(description="ledger entries of the quote")
    def ledger(self, obj: Execution) -> str:
        from settlement.models import JournalEntry, Posting

        entries = (JournalEntry.objects.filter(quote_id=obj.quote_id).order_by("created_at")
                   .prefetch_related(Prefetch("postings", Posting.objects.select_related("account")
                                              .order_by("-amount", "pk"))))
        return ledger_table(list(entries))

    def has_recover_execution_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("execution.change_execution")

    @admin.action(description="Mark for recovery (the recovery job asks the chain; nothing is re-signed)",
                  permissions=["recover_execution"])
    def mark_for_recovery_action(self, request: HttpRequest, queryset: QuerySet[Execution]) -> None:
        actor = operator_actor(request)
        flagged = skipped = 0
        for execution_id in queryset.values_list("pk", flat=True):
            if mark_for_recovery(execution_id=execution_id, actor=actor):
                flagged += 1
            else:
                skipped += 1
        if flagged:
            self.message_user(request, f"{flagged} execution(s) flagged; the recovery job is queued.",
                              messages.SUCCESS)
        if skipped:
            self.message_user(request, f"{skipped} execution(s) skipped: already final or already "
                                       "flagged.", messages.WARNING)


@admin.register(ExecutionTransition)
class ExecutionTransitionAdmin(IdSearchMixin, ReadOnlyAdmin):
    list_display = ("at", "execution", "from_status", "to_status", "actor", "signature")
    list_filter = ("to_status", age_filter("at"))
    search_fields = ("=signature", "actor")
    id_search_fields = ("execution__id", "execution__quote__id")
    list_select_related = ("execution",)
    show_full_result_count = False
