"""Quotes in the back office: read-only. A quote's page shows its whole story: the
transition history, its execution, the payments that funded it, refunds, and every ledger
entry booked for it. Status changes belong to `quote_transition`, never to admin."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from config.admin_base import (
    AgeFilter,
    IdSearchMixin,
    ReadOnlyAdmin,
    admin_link,
    age_filter,
    amount_display,
    ledger_table,
    transitions_table,
    user_filter,
    user_list_link,
)
from quotes.models import PriceObservation, Quote, QuoteTransition


class ExecutionFailReasonFilter(admin.SimpleListFilter):
    title = "execution fail reason"
    parameter_name = "fail_reason"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        from execution.models import FailReason

        return list(FailReason.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        if self.value():
            return queryset.filter(execution__fail_reason=self.value())
        return queryset


@admin.register(Quote)
class QuoteAdmin(IdSearchMixin, ReadOnlyAdmin):
    list_display = ("id", "user_link", "status", "source_chain", "total_cost_display",
                    "outflow_display", "execution_status", "created_at", "expires_at")
    list_filter = ("status", "source_chain", AgeFilter, ExecutionFailReasonFilter,
                   "pay_from_balance", user_filter("user_id"))
    search_fields = ("payment_memo", "=nonce", "user__username", "refund_to",
                     "=funding_payments__tx_hash", "=execution__signature",
                     "=execution__attempts__signature")
    id_search_fields = ("id", "execution__id")
    search_help_text = ("Quote id, execution id, payment memo, nonce, username, refund address, "
                        "payment tx hash or Solana signature")
    list_select_related = ("user", "execution")
    date_hierarchy = "created_at"
    show_full_result_count = False
    fieldsets = [
        (None, {"fields": ["id", "user", "status", "source_chain", "source_asset",
                           "pay_from_balance", "created_at", "expires_at", "committed_at",
                           "executed_at"]}),
        ("Transition history", {"fields": ["history"]}),
        ("What the user pays (source chain, smallest units)",
         {"fields": ["source_amount", "service_fee", "gas_estimate", "total_cost_display",
                     "payment_address", "payment_memo_type", "payment_memo", "refund_to"]}),
        ("What the treasury spends on Solana",
         {"fields": ["outflow_display", "fee_lamports", "max_lamports_spend", "token_outflows",
                     "estimated_compute_units", "priority_fee_micro_lamports", "instructions",
                     "price_snapshot", "nonce"]}),
        ("Execution, payments and refunds", {"fields": ["execution_summary", "payments", "refunds"]}),
        ("Ledger entries", {"fields": ["ledger"]}),
    ]
    readonly_fields = ("id", "user", "status", "source_chain", "source_asset", "pay_from_balance",
                       "created_at", "expires_at", "committed_at", "executed_at", "source_amount",
                       "service_fee", "gas_estimate", "total_cost_display", "payment_address",
                       "payment_memo_type", "payment_memo", "refund_to", "outflow_display",
                       "fee_lamports", "max_lamports_spend", "token_outflows",
                       "estimated_compute_units", "priority_fee_micro_lamports", "instructions",
                       "price_snapshot", "nonce", "execution_summary", "payments", "refunds",
                       "ledger", "history")

    @admin.display(description="user", ordering="user__username")
    def user_link(self, obj: Quote) -> str:
        return user_list_link(self, obj.user)

    @admin.display(description="total cost", ordering="total_cost")
    def total_cost_display(self, obj: Quote) -> str:
        return amount_display(obj.total_cost, obj.source_asset)

    @admin.display(description="treasury outflow", ordering="treasury_outflow_lamports")
    def outflow_display(self, obj: Quote) -> str:
        return amount_display(obj.treasury_outflow_lamports, "SOL")

    @admin.display(description="execution", ordering="execution__status")
    def execution_status(self, obj: Quote) -> str:
        execution = getattr(obj, "execution", None)
        if execution is None:
            return "—"
        text = execution.status + (f" ({execution.fail_reason})" if execution.fail_reason else "")
        return admin_link(execution, text)

    @admin.display(description="transitions")
    def history(self, obj: Quote) -> str:
        return transitions_table(list(obj.transitions.order_by("at", "id")))

    @admin.display(description="execution")
    def execution_summary(self, obj: Quote) -> str:
        from execution.models import Execution

        execution = Execution.objects.filter(quote=obj).first()
        if execution is None:
            return "No execution."
        return format_html(
            "{} · status <b>{}</b> · signature <code>{}</code> · attempts {} · fee {} · "
            "outflow {}{}",
            admin_link(execution, str(execution.pk)), execution.status,
            execution.signature or "—", execution.attempt_count,
            amount_display(execution.fee_lamports, "SOL"),
            amount_display(execution.treasury_outflow_lamports, "SOL"),
            format_html(" · failed: {} {}", execution.fail_reason, execution.error_message)
            if execution.fail_reason else "")

    @admin.display(description="funding payments")
    def payments(self, obj: Quote) -> str:
        rows = obj.funding_payments.order_by("received_at")
        if not rows:
            return "None."
        return format_html("<ul>{}</ul>", format_html_join(
            "", "<li>{} {} <code>{}</code> {} from <code>{}</code></li>",
            ((admin_link(p, p.status), p.chain, p.tx_hash, amount_display(p.amount, p.asset),
              p.from_address) for p in rows)))

    @admin.display(description="refunds")
    def refunds(self, obj: Quote) -> str:
        rows = obj.refunds.order_by("created_at")
        if not rows:
            return "None."
        return format_html("<ul>{}</ul>", format_html_join(
            "", "<li>{} {} {} to <code>{}</code></li>",
            ((admin_link(r, r.status), r.reason, amount_display(r.amount, r.asset), r.destination)
             for r in rows)))

    @admin.display(description="ledger")
    def ledger(self, obj: Quote) -> str:
        from settlement.models import JournalEntry, Posting

        entries = (JournalEntry.objects.filter(quote=obj).order_by("created_at")
                   .prefetch_related(Prefetch("postings",
                                              Posting.objects.select_related("account")
                                              .order_by("-amount", "pk"))))
        return ledger_table(list(entries))


@admin.register(QuoteTransition)
class QuoteTransitionAdmin(IdSearchMixin, ReadOnlyAdmin):
    list_display = ("at", "quote", "from_status", "to_status", "actor", "tx_hash")
    list_filter = ("to_status", age_filter("at"))
    search_fields = ("=tx_hash", "actor")
    id_search_fields = ("quote__id",)
    list_select_related = ("quote",)
    show_full_result_count = False


@admin.register(PriceObservation)
class PriceObservationAdmin(ReadOnlyAdmin):
    list_display = ("pair", "price", "confidence", "publish_time", "source")
    list_filter = ("pair", "source")
    date_hierarchy = "publish_time"
    show_full_result_count = False
