"""The books in the back office: funding payments (incl. unmatched deposits), refunds,
settlements, withdrawals, the ledger, treasury accounts and reconciliation reports.

Actions call the settlement services and need these permissions:

- resolve an unmatched deposit: settlement.change_fundingpayment → `payment_resolve_unmatched`
- refund an unmatched deposit to its payer: settlement.approve_refund → `unmatched_payment_refund`
- approve refunds: settlement.approve_refund → `refund_mark(to_status="approved")`
- record a refund paid out (tx hash): settlement.approve_refund → `refund_complete`
- approve / reject withdrawals: settlement.approve_withdrawal → `withdrawal_approve` / `_reject`
- pay out an approved withdrawal now: settlement.approve_withdrawal → `withdrawal_execute`
- retry a settlement's verification / mark it failed: settlement.change_settlement →
  `settlement_retry_verification` / `settlement_fail`
- run reconciliation now: settlement.add_reconciliationreport → `reconcile_run`

Signed payout bytes (`signed_transaction`) are never loaded into a page.
"""

from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet, Sum
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils.http import url_has_allowed_host_and_scheme

from config.admin_base import (
    AgeFilter,
    IdSearchMixin,
    ReadOnlyAdmin,
    ReadOnlyInline,
    ReasonForm,
    action_form_page,
    admin_link,
    age_filter,
    amount_display,
    audit_history,
    bound_action_form,
    entries_with_postings,
    ledger_table,
    operator_actor,
    operator_user,
    run_per_row,
    transitions_table,
    user_filter,
    user_list_link,
)
from config.errors import ServiceError
from risk.audit import audit_record
from settlement.models import (
    FundingPayment,
    JournalEntry,
    LedgerAccount,
    Posting,
    ReconciliationReport,
    Refund,
    RefundStatus,
    Settlement,
    TreasuryAccount,
    UserBalance,
    WatcherCursor,
    Withdrawal,
)

# --- ledger ----------------------------------------------------------------------------------


class PostingInline(ReadOnlyInline):
    model = Posting
    fields = readonly_fields = ("account", "asset", "amount")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Posting]:
        return super().get_queryset(request).select_related("account")


@admin.register(JournalEntry)
class JournalEntryAdmin(IdSearchMixin, ReadOnlyAdmin):
    list_display = ("created_at", "kind", "reference", "quote", "tx_hash", "posting_count")
    list_filter = ("kind", AgeFilter)
    search_fields = ("reference", "=tx_hash")
    id_search_fields = ("id", "quote__id", "user__id")
    list_select_related = ("quote",)
    show_full_result_count = False
    date_hierarchy = "created_at"
    inlines = [PostingInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[JournalEntry]:
        return super().get_queryset(request).annotate(posting_count=Count("postings"))

    @admin.display(description="postings", ordering="posting_count")
    def posting_count(self, obj: Any) -> int:
        return int(obj.posting_count)


@admin.register(LedgerAccount)
class LedgerAccountAdmin(ReadOnlyAdmin):
    list_display = ("code", "kind", "chain", "asset", "balance_display")
    list_filter = ("kind", "chain", "asset")
    search_fields = ("code",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[LedgerAccount]:
        return super().get_queryset(request).annotate(balance=Sum("postings__amount"))

    @admin.display(description="balance (+debit / −credit)", ordering="balance")
    def balance_display(self, obj: Any) -> str:
        return amount_display(obj.balance or 0, obj.asset)


# --- funding payments ------------------------------------------------------------------------


class ResolvePaymentForm(forms.Form):
    quote_id = forms.UUIDField(required=False, label="Apply to quote (id)",
                               help_text="A pending, unexpired quote on the payment's chain.")
    user = forms.CharField(required=False, max_length=150, label="…or credit the balance of user",
                           help_text="Username or user id.")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if bool(data.get("quote_id")) == bool((data.get("user") or "").strip()):
            raise forms.ValidationError("Give exactly one: a quote id or a user.")
        user_text = (data.get("user") or "").strip()
        if user_text:
            from users.models import User

            try:
                match = User.objects.filter(pk=uuid.UUID(user_text)).first()
            except ValueError:
                match = User.objects.filter(username=user_text).first()
            if match is None:
                raise forms.ValidationError("No such user.")
            data["user_id"] = match.pk
        return data


class RefundPayerForm(forms.Form):
    destination = forms.CharField(required=False, max_length=128,
                                  help_text="Leave empty to pay back the sending address.")


@admin.register(FundingPayment)
class FundingPaymentAdmin(IdSearchMixin, ReadOnlyAdmin):
    list_display = ("received_at", "chain", "tx_hash", "status", "amount_display", "memo",
                    "quote_link", "user_link", "resolved_at")
    list_filter = ("status", "chain", "source", age_filter("received_at"),
                   ("resolved_at", admin.EmptyFieldListFilter), user_filter("user_id"))
    search_fields = ("=tx_hash", "memo", "from_address", "to_address")
    id_search_fields = ("id", "quote__id")
    search_help_text = "Payment id, quote id, tx hash, memo or address"
    list_select_related = ("quote", "user")
    show_full_result_count = False
    actions = ["resolve_action", "refund_to_payer_action"]
    fields = readonly_fields = (
        "id", "chain", "tx_hash", "status", "amount_display", "from_address", "to_address",
        "memo_type", "memo", "source", "quote_link", "user", "chain_time", "received_at",
        "resolved_at", "refund_list", "history", "ledger", "chain_details")

    @admin.display(description="amount", ordering="amount")
    def amount_display(self, obj: FundingPayment) -> str:
        return amount_display(obj.amount, obj.asset)

    @admin.display(description="quote")
    def quote_link(self, obj: FundingPayment) -> str:
        return admin_link(obj.quote, str(obj.quote_id)) if obj.quote_id else "—"

    @admin.display(description="user", ordering="user__username")
    def user_link(self, obj: FundingPayment) -> str:
        return user_list_link(self, obj.user)

    @admin.display(description="refunds")
    def refund_list(self, obj: FundingPayment) -> str:
        from django.utils.html import format_html, format_html_join

        rows = obj.refunds.order_by("created_at")
        return format_html("<ul>{}</ul>", format_html_join(
            "", "<li>{} {} {}</li>",
            ((admin_link(r, r.status), r.reason, amount_display(r.amount, r.asset)) for r in rows)
        )) if rows else "None."

    @admin.display(description="history (audit)")
    def history(self, obj: FundingPayment) -> str:
        return audit_history(entity_type="funding_payment", entity_id=obj.pk)

    @admin.display(description="ledger entries of this transaction")
    def ledger(self, obj: FundingPayment) -> str:
        return ledger_table(entries_with_postings(JournalEntry.objects.filter(tx_hash=obj.tx_hash)))

    def has_resolve_payment_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("settlement.change_fundingpayment")

    def has_approve_refund_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("settlement.approve_refund")

    @admin.action(description="Resolve an unmatched deposit to a quote or a balance…",
                  permissions=["resolve_payment"])
    def resolve_action(self, request: HttpRequest, queryset: QuerySet[FundingPayment]
                       ) -> HttpResponse | None:
        from settlement.services.resolution import payment_resolve_unmatched

        if queryset.count() != 1:
            self.message_user(request, "Select exactly one payment to resolve.", messages.WARNING)
            return None
        form = bound_action_form(request, ResolvePaymentForm)
        if form.is_bound and form.is_valid():
            actor = operator_actor(request)
            data = form.cleaned_data
            run_per_row(self, request, queryset, lambda payment: payment_resolve_unmatched(
                payment_id=payment.pk, operator=actor, quote_id=data.get("quote_id"),
                user_id=data.get("user_id")), done="Payment resolved.")
            return None
        return action_form_page(
            self, request, queryset, form=form, title="Resolve an unmatched deposit",
            intro=("Apply this payment to a pending quote (it commits the quote and starts its "
                   "execution; any excess is refunded) or credit it to a user's prepaid balance. "
                   "This moves the money out of unmatched deposits once and is audited."),
            submit_label="Resolve")

    @admin.action(description="Refund an unmatched deposit to its payer…",
                  permissions=["approve_refund"])
    def refund_to_payer_action(self, request: HttpRequest, queryset: QuerySet[FundingPayment]
                               ) -> HttpResponse | None:
        from settlement.services.refunds import unmatched_payment_refund

        form = bound_action_form(request, RefundPayerForm)
        if form.is_bound and form.is_valid():
            actor = operator_actor(request)
            destination = form.cleaned_data["destination"].strip()
            run_per_row(self, request, queryset, lambda payment: unmatched_payment_refund(
                payment_id=payment.pk, actor=actor, destination=destination),
                done="{count} refund(s) recorded as due.")
            return None
        return action_form_page(
            self, request, queryset, form=form, title="Refund unmatched deposits",
            intro=("Record each selected unmatched payment as owed back (a refund that then needs "
                   "approval and payout)."), submit_label="Record refunds")


# --- refunds ---------------------------------------------------------------------------------


class RefundCompleteForm(forms.Form):
    tx_hash = forms.CharField(max_length=128, label="Payout transaction hash",
                              help_text="The chain transaction that paid this refund out.")


@admin.register(Refund)
class RefundAdmin(IdSearchMixin, ReadOnlyAdmin):
    list_display = ("created_at", "status", "reason", "chain", "amount_display", "destination",
                    "user_link", "quote_link", "tx_hash", "approved_by")
    list_filter = ("status", "reason", "chain", AgeFilter, user_filter("user_id"))
    search_fields = ("=tx_hash", "destination", "=funding_payment__tx_hash", "user__username")
    id_search_fields = ("id", "quote__id", "funding_payment__id")
    search_help_text = "Refund id, quote id, payment id, tx hash, destination or username"
    list_select_related = ("user", "quote")
    show_full_result_count = False
    actions = ["approve_action", "complete_action"]
    fields = readonly_fields = (
        "id", "status", "reason", "chain", "amount_display", "destination", "user", "quote_link",
        "funding_payment_link", "tx_hash", "approved_by", "created_at", "updated_at", "history",
        "ledger")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Refund]:
        return super().get_queryset(request).defer("signed_transaction")

    @admin.display(description="amount", ordering="amount")
    def amount_display(self, obj: Refund) -> str:
        return amount_display(obj.amount, obj.asset)

    @admin.display(description="user", ordering="user__username")
    def user_link(self, obj: Refund) -> str:
        return user_list_link(self, obj.user)

    @admin.display(description="quote")
    def quote_link(self, obj: Refund) -> str:
        return admin_link(obj.quote, str(obj.quote_id)) if obj.quote_id else "—"

    @admin.display(description="funding payment")
    def funding_payment_link(self, obj: Refund) -> str:
        payment = obj.funding_payment
        return admin_link(payment, payment.tx_hash) if payment is not None else "—"

    @admin.display(description="history (audit)")
    def history(self, obj: Refund) -> str:
        return audit_history(entity_type="refund", entity_id=obj.pk)

    @admin.display(description="ledger")
    def ledger(self, obj: Refund) -> str:
        return ledger_table(entries_with_postings(JournalEntry.objects.filter(reference=f"refund:{obj.pk}")))

    def has_approve_refund_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("settlement.approve_refund")

    @admin.action(description="Approve refunds", permissions=["approve_refund"])
    def approve_action(self, request: HttpRequest, queryset: QuerySet[Refund]) -> None:
        from settlement.services.refunds import refund_mark

        actor = operator_actor(request)
        run_per_row(self, request, queryset, lambda refund: refund_mark(
            refund_id=refund.pk, to_status=RefundStatus.APPROVED, actor=actor),
            done="{count} refund(s) approved.")

    @admin.action(description="Record a refund as paid out (tx hash)…", permissions=["approve_refund"])
    def complete_action(self, request: HttpRequest, queryset: QuerySet[Refund]) -> HttpResponse | None:
        from settlement.services.refunds import refund_complete

        if queryset.count() != 1:
            self.message_user(request, "Select exactly one refund: each payout has its own tx hash.",
                              messages.WARNING)
            return None
        form = bound_action_form(request, RefundCompleteForm)
        if form.is_bound and form.is_valid():
            actor = operator_actor(request)
            tx_hash = form.cleaned_data["tx_hash"].strip()
            run_per_row(self, request, queryset, lambda refund: refund_complete(
                refund_id=refund.pk, tx_hash=tx_hash, actor=actor), done="Refund completed.")
            return None
        return action_form_page(
            self, request, queryset, form=form, title="Record a refund as paid out",
            intro=("The payout landed on chain: this settles the debt out of the treasury in the "
                   "ledger, once. Only approved (or sent) refunds can be completed."),
            submit_label="Record payout")


# --- settlements -----------------------------------------------------------------------------


@admin.register(Settlement)
class SettlementAdmin(IdSearchMixin, ReadOnlyAdmin):
    list_display = ("created_at", "status", "source_chain", "source_tx_hash", "amount_display",
                    "quote_link", "fail_reason", "verified_at", "settled_at")
    list_filter = ("status", "source_chain", AgeFilter, ("fail_reason", admin.EmptyFieldListFilter),
                   user_filter("execution__quote__user_id"))
    search_fields = ("=source_tx_hash", "=execution__signature", "fail_reason")
    id_search_fields = ("id", "execution__id", "execution__quote__id", "funding_payment__id")
    search_help_text = "Settlement, execution or quote id, source tx hash, Solana signature"
    list_select_related = ("execution", "execution__quote")
    show_full_result_count = False
    fields = readonly_fields = (
        "id", "status", "source_chain", "source_tx_hash", "amount_display", "quote_link",
        "execution_link", "funding_payment_link", "fail_reason", "created_at", "updated_at",
        "verified_at", "settled_at", "history", "ledger")

    actions = ["retry_verification_action", "fail_action"]

    def has_retry_settlement_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("settlement.change_settlement")

    @admin.action(description="Retry verification (and settle if the books allow)",
                  permissions=["retry_settlement"])
    def retry_verification_action(self, request: HttpRequest, queryset: QuerySet[Settlement]) -> None:
        from settlement.services.settlements import settlement_retry_verification

        actor = operator_actor(request)

        def retry(settlement: Settlement) -> None:
            # Audited even when the chain cannot answer yet and nothing else changes.
            audit_record(event_type="settlement_retry_requested", actor=actor,
                         entity_type="settlement", entity_id=settlement.pk,
                         details={"status": settlement.status})
            result = settlement_retry_verification(settlement_id=settlement.pk, actor=actor)
            self.message_user(request, f"Settlement {result.pk}: {settlement.status} → {result.status}",
                              messages.INFO)

        run_per_row(self, request, queryset, retry, done="{count} settlement(s) retried.")

    @admin.action(description="Mark settlements failed…", permissions=["retry_settlement"])
    def fail_action(self, request: HttpRequest, queryset: QuerySet[Settlement]) -> HttpResponse | None:
        from settlement.services.settlements import settlement_fail

        form = bound_action_form(request, ReasonForm)
        if form.is_bound and form.is_valid():
            actor, reason = operator_actor(request), form.cleaned_data["reason"]
            run_per_row(self, request, queryset, lambda settlement: settlement_fail(
                settlement_id=settlement.pk, reason=reason, actor=actor),
                done="{count} settlement(s) marked failed.")
            return None
        return action_form_page(self, request, queryset, form=form, title="Mark settlements failed",
                                intro=("Give up on the selected settlements: an alert is raised and "
                                       "the decision is recorded with your reason."),
                                submit_label="Mark failed", danger=True)

    @admin.display(description="source amount", ordering="source_amount")
    def amount_display(self, obj: Settlement) -> str:
        from config.chains import NATIVE_ASSET, Chain

        return amount_display(obj.source_amount, NATIVE_ASSET.get(Chain(obj.source_chain), ""))

    @admin.display(description="quote")
    def quote_link(self, obj: Settlement) -> str:
        return admin_link(obj.execution.quote, str(obj.execution.quote_id))

    @admin.display(description="execution")
    def execution_link(self, obj: Settlement) -> str:
        return admin_link(obj.execution, f"{obj.execution_id} ({obj.execution.status})")

    @admin.display(description="funding payment")
    def funding_payment_link(self, obj: Settlement) -> str:
        payment = obj.funding_payment
        return admin_link(payment, payment.tx_hash) if payment is not None else "—"

    @admin.display(description="transition history")
    def history(self, obj: Settlement) -> str:
        return transitions_table(list(obj.transitions.order_by("at", "id")))

    @admin.display(description="ledger entries of the quote")
    def ledger(self, obj: Settlement) -> str:
        return ledger_table(entries_with_postings(
            JournalEntry.objects.filter(quote_id=obj.execution.quote_id)))


# --- withdrawals -----------------------------------------------------------------------------


class RejectWithdrawalForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 80}), max_length=2000,
                             help_text="Required; the amount returns to the user's balance.")


@admin.register(Withdrawal)
class WithdrawalAdmin(IdSearchMixin, ReadOnlyAdmin):
    list_display = ("created_at", "user_link", "chain", "amount_display", "destination", "status",
                    "tx_hash", "approved_by", "fail_reason")
    list_filter = ("status", "chain", AgeFilter, ("fail_reason", admin.EmptyFieldListFilter),
                   user_filter("user_id"))
    search_fields = ("=tx_hash", "destination", "user__username")
    id_search_fields = ("id", "user__id")
    search_help_text = "Withdrawal id, user id or username, tx hash, destination address"
    list_select_related = ("user",)
    show_full_result_count = False
    actions = ["approve_action", "reject_action", "execute_action"]
    readonly_fields = ("id", "user", "chain", "amount_display", "destination", "status", "tx_hash",
                       "approved_by", "fail_reason", "created_at", "updated_at", "completed_at",
                       "history", "ledger")
    fields = readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Withdrawal]:
        return super().get_queryset(request).defer("signed_transaction")

    @admin.display(description="amount", ordering="amount")
    def amount_display(self, obj: Withdrawal) -> str:
        return amount_display(obj.amount, obj.asset)

    @admin.display(description="user", ordering="user__username")
    def user_link(self, obj: Withdrawal) -> str:
        return user_list_link(self, obj.user)

    @admin.display(description="history (audit)")
    def history(self, obj: Withdrawal) -> str:
        return audit_history(entity_type="withdrawal", entity_id=obj.pk)

    @admin.display(description="ledger")
    def ledger(self, obj: Withdrawal) -> str:
        return ledger_table(entries_with_postings(
            JournalEntry.objects.filter(reference__endswith=f":{obj.pk}", user_id=obj.user_id)))

    def has_approve_withdrawal_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("settlement.approve_withdrawal")

    @admin.action(description="Approve withdrawals (pays them out)", permissions=["approve_withdrawal"])
    def approve_action(self, request: HttpRequest, queryset: QuerySet[Withdrawal]) -> None:
        from settlement.services.withdrawals import withdrawal_approve

        run_per_row(self, request, queryset, lambda w: withdrawal_approve(
            withdrawal_id=w.pk, operator=operator_user(request)), done="{count} withdrawal(s) approved.")

    @admin.action(description="Reject withdrawals…", permissions=["approve_withdrawal"])
    def reject_action(self, request: HttpRequest, queryset: QuerySet[Withdrawal]) -> HttpResponse | None:
        from settlement.services.withdrawals import withdrawal_reject

        form = bound_action_form(request, RejectWithdrawalForm)
        if form.is_bound and form.is_valid():
            reason = form.cleaned_data["reason"]
            run_per_row(self, request, queryset, lambda w: withdrawal_reject(
                withdrawal_id=w.pk, operator=operator_user(request), reason=reason),
                done="{count} withdrawal(s) rejected.")
            return None
        return action_form_page(self, request, queryset, form=form, title="Reject withdrawals",
                                intro="Refuse the selected withdrawals awaiting approval.",
                                submit_label="Reject", danger=True)

    @admin.action(description="Pay out approved withdrawals now (signs once; a retry re-sends)",
                  permissions=["approve_withdrawal"])
    def execute_action(self, request: HttpRequest, queryset: QuerySet[Withdrawal]) -> None:
        from settlement.services.withdrawals import withdrawal_execute

        actor = operator_actor(request)

        def execute(withdrawal: Withdrawal) -> None:
            audit_record(event_type="withdrawal_execute_requested", actor=actor,
                         entity_type="withdrawal", entity_id=withdrawal.pk, user_id=withdrawal.user_id,
                         details={"status": withdrawal.status})
            result = withdrawal_execute(withdrawal_id=withdrawal.pk)
            self.message_user(request, f"Withdrawal {result.pk}: {result.status}", messages.INFO)

        run_per_row(self, request, queryset, execute, done="{count} withdrawal(s) processed.")


# --- treasury, balances, reconciliation ------------------------------------------------------


@admin.register(UserBalance)
class UserBalanceAdmin(ReadOnlyAdmin):
    list_display = ("user", "chain", "asset", "amount", "locked", "available", "updated_at")
    list_filter = ("chain",)
    search_fields = ("user__username",)
    list_select_related = ("user",)


@admin.register(TreasuryAccount)
class TreasuryAccountAdmin(ReadOnlyAdmin):
    list_display = ("chain", "asset", "address", "last_chain_balance", "last_checked_at")


@admin.register(ReconciliationReport)
class ReconciliationReportAdmin(ReadOnlyAdmin):
    """Reports, and "run now": books against chains, which also refreshes the on-chain
    treasury balances the dashboard shows. Permission: settlement.add_reconciliationreport."""

    list_display = ("started_at", "outcome", "finished_at", "triggered_by", "mismatch_count")
    list_filter = ("outcome", age_filter("started_at"))
    fields = readonly_fields = ("outcome", "started_at", "finished_at", "triggered_by", "checks",
                                "mismatches")
    change_list_template = "admin/ops/reconciliation_changelist.html"

    def has_run_reconciliation_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("settlement.add_reconciliationreport")

    def get_urls(self) -> list[URLPattern]:
        return [path("run/", self.admin_site.admin_view(self.run_view),
                     name="settlement_reconciliationreport_run"), *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None
                        ) -> HttpResponse:
        extra = {"can_run": self.has_run_reconciliation_permission(request), **(extra_context or {})}
        return super().changelist_view(request, extra)

    def run_view(self, request: HttpRequest) -> HttpResponse:
        from settlement.services.reconciliation import reconcile_run

        if not self.has_run_reconciliation_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        try:
            report = reconcile_run(triggered_by=operator_actor(request))
        except ServiceError as exc:
            self.message_user(request, f"{exc.message} ({exc.code})", messages.ERROR)
        else:
            level = messages.SUCCESS if report.outcome == "ok" else messages.WARNING
            self.message_user(request, f"Reconciliation {report.pk}: {report.outcome}", level)
        back = request.POST.get("next", "")
        if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
            back = reverse("admin:settlement_reconciliationreport_changelist")
        return HttpResponseRedirect(back)

    @admin.display(description="mismatches")
    def mismatch_count(self, obj: ReconciliationReport) -> int:
        return len(obj.mismatches or [])


@admin.register(WatcherCursor)
class WatcherCursorAdmin(ReadOnlyAdmin):
    list_display = ("name", "cursor", "updated_at")
