from django.contrib import admin

from config.admin_base import ReadOnlyAdmin
from quotes.models import PriceObservation, Quote, QuoteTransition


class QuoteTransitionInline(admin.TabularInline):
    model = QuoteTransition
    extra = 0
    can_delete = False
    readonly_fields = ("from_status", "to_status", "at", "actor", "details", "tx_hash")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Quote)
class QuoteAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "status", "source_chain", "total_cost", "created_at",
                    "expires_at")
    list_filter = ("status", "source_chain")
    search_fields = ("id", "payment_memo", "nonce")
    list_select_related = ("user",)
    inlines = [QuoteTransitionInline]


@admin.register(PriceObservation)
class PriceObservationAdmin(ReadOnlyAdmin):
    list_display = ("pair", "price", "confidence", "publish_time", "source")
    list_filter = ("pair", "source")
