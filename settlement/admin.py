from django.contrib import admin

from config.admin_base import ReadOnlyAdmin
from settlement.models import (
    FundingPayment,
    JournalEntry,
    LedgerAccount,
    Posting,
    ReconciliationReport,
    Refund,
    Settlement,
    SettlementTransition,
    TreasuryAccount,
    UserBalance,
    WatcherCursor,
    Withdrawal,
)


class PostingInline(admin.TabularInline):
    model = Posting
    extra = 0
    can_delete = False
    readonly_fields = ("account", "asset", "amount")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(JournalEntry)
class JournalEntryAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "reference", "quote", "tx_hash")
    list_filter = ("kind",)
    search_fields = ("reference", "tx_hash", "quote__id")
    inlines = [PostingInline]


@admin.register(LedgerAccount)
class LedgerAccountAdmin(ReadOnlyAdmin):
    list_display = ("code", "kind", "chain", "asset")
    list_filter = ("kind", "chain")
    search_fields = ("code",)


@admin.register(FundingPayment)
class FundingPaymentAdmin(ReadOnlyAdmin):
    list_display = ("received_at", "chain", "tx_hash", "status", "amount", "asset", "quote")
    list_filter = ("status", "chain")
    search_fields = ("tx_hash", "memo", "from_address", "quote__id")


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "status", "reason", "chain", "amount", "destination")
    list_filter = ("status", "reason", "chain")


class SettlementTransitionInline(admin.TabularInline):
    model = SettlementTransition
    extra = 0
    can_delete = False
    readonly_fields = ("from_status", "to_status", "at", "actor", "details", "tx_hash")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Settlement)
class SettlementAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "status", "source_chain", "source_tx_hash", "source_amount")
    list_filter = ("status", "source_chain")
    inlines = [SettlementTransitionInline]


@admin.register(UserBalance)
class UserBalanceAdmin(ReadOnlyAdmin):
    list_display = ("user", "chain", "amount", "locked", "updated_at")


@admin.register(Withdrawal)
class WithdrawalAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "user", "chain", "amount", "status", "tx_hash")
    list_filter = ("status", "chain")
    exclude = ("signed_transaction",)


@admin.register(TreasuryAccount)
class TreasuryAccountAdmin(ReadOnlyAdmin):
    list_display = ("chain", "asset", "address", "last_chain_balance", "last_checked_at")


@admin.register(ReconciliationReport)
class ReconciliationReportAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "outcome", "finished_at", "triggered_by")


@admin.register(WatcherCursor)
class WatcherCursorAdmin(ReadOnlyAdmin):
    list_display = ("name", "cursor", "updated_at")
