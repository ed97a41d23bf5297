"""Risk in the back office: the circuit breaker (state, history, trip and reset behind a
confirmation page with a required reason), spend counters, alerts and the read-only audit
log. Trip and reset call `risk.services`; the services check the permission again and
write the history event and the audit row with the operator's name."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from config.admin_base import ReadOnlyAdmin, ReasonForm, age_filter
from config.errors import ServiceError
from risk.models import (
    Alert,
    AuditEvent,
    CircuitBreaker,
    CircuitBreakerEvent,
    DailySpending,
    SpendReservation,
    TreasuryOutflow,
    UserDailySpending,
)
from risk.services import breaker_reset, breaker_trip_by_operator


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """Append-only in PostgreSQL too (a trigger refuses UPDATE and DELETE)."""

    list_display = ("created_at", "event_type", "actor", "entity_type", "entity_id")
    list_filter = ("event_type", "entity_type", age_filter("created_at"))
    search_fields = ("=entity_id", "actor", "event_type")
    date_hierarchy = "created_at"
    show_full_result_count = False  # the log grows forever: no COUNT(*) per page view
    readonly_fields = ("created_at", "event_type", "actor", "entity_type", "entity_id", "user",
                       "details")
    raw_id_fields = ("user",)


@admin.register(CircuitBreaker)
class CircuitBreakerAdmin(ReadOnlyAdmin):
    list_display = ("state", "trigger", "reason", "opened_at", "opened_by",
                    "consecutive_failures", "reset_at")
    actions = ["trip_action", "reset_action"]
    readonly_fields = ("is_open", "trigger", "reason", "opened_at", "opened_by",
                       "consecutive_failures", "reset_at", "updated_at", "history")
    change_list_template = "admin/ops/breaker_changelist.html"

    @admin.display(description="state")
    def state(self, obj: CircuitBreaker) -> str:
        return format_html('<span class="ops-badge {}">{}</span>', "open" if obj.is_open else "closed",
                           "OPEN" if obj.is_open else "CLOSED")

    @admin.display(description="recent history")
    def history(self, obj: CircuitBreaker) -> str:
        events = CircuitBreakerEvent.objects.order_by("-at")[:20]
        return format_html("<ul>{}</ul>", format_html_join(
            "", "<li>{} <b>{}</b> ({}) by {}: {}</li>",
            ((f"{e.at:%Y-%m-%d %H:%M:%S}", e.kind, e.trigger or "—", e.actor, e.reason)
             for e in events)))

    # Django's action permission hooks: `permissions=["trip_breaker"]` → this method.
    def has_trip_breaker_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("risk.trip_breaker")

    def has_reset_breaker_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("risk.reset_breaker")

    @admin.action(description="Trip the circuit breaker…", permissions=["trip_breaker"])
    def trip_action(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse:
        return HttpResponseRedirect(reverse("admin:risk_circuitbreaker_trip"))

    @admin.action(description="Reset the circuit breaker…", permissions=["reset_breaker"])
    def reset_action(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse:
        return HttpResponseRedirect(reverse("admin:risk_circuitbreaker_reset"))

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("trip/", wrap(self.trip_view), name="risk_circuitbreaker_trip"),
            path("reset/", wrap(self.reset_view), name="risk_circuitbreaker_reset"),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None
                        ) -> HttpResponse:
        CircuitBreaker.objects.get_or_create(pk=1)  # a fresh database has no row to act on
        extra = {"can_trip": self.has_trip_breaker_permission(request),
                 "can_reset": self.has_reset_breaker_permission(request),
                 "breaker": CircuitBreaker.objects.get(pk=1),
                 "events": CircuitBreakerEvent.objects.order_by("-at")[:10],
                 **(extra_context or {})}
        return super().changelist_view(request, extra)

    def trip_view(self, request: HttpRequest) -> HttpResponse:
        return self._confirm(
            request, permission=self.has_trip_breaker_permission,
            title="Trip the circuit breaker",
            intro=("Opening the breaker stops all new quotes and executions at once. Committed "
                   "quotes wait until an operator resets it."),
            submit_label="Yes, trip the breaker",
            run=lambda reason: breaker_trip_by_operator(actor_user=request.user, reason=reason),
            done="Circuit breaker tripped.", unchanged="The breaker was already open.")

    def reset_view(self, request: HttpRequest) -> HttpResponse:
        breaker = CircuitBreaker.objects.filter(pk=1).first()
        intro = ("Resetting closes the breaker: quotes and executions resume, waiting executions "
                 "are picked up again, and outflow and volume are measured from now on.")
        if breaker is not None and breaker.is_open:
            intro += (f" It opened at {breaker.opened_at:%Y-%m-%d %H:%M:%S} UTC, trigger "
                      f"'{breaker.trigger}', by {breaker.opened_by}: {breaker.reason}")

        def run(reason: str) -> bool:
            was_open = CircuitBreaker.objects.filter(pk=1, is_open=True).exists()
            breaker_reset(actor_user=request.user, reason=reason)
            return was_open

        return self._confirm(
            request, permission=self.has_reset_breaker_permission,
            title="Reset the circuit breaker", intro=intro,
            submit_label="Yes, reset the breaker", run=run,
            done="Circuit breaker reset.", unchanged="The breaker was already closed.")

    def _confirm(self, request: HttpRequest, *, permission: Any, title: str, intro: str,
                 submit_label: str, run: Any, done: str, unchanged: str) -> HttpResponse:
        from django.core.exceptions import PermissionDenied

        if not permission(request):
            raise PermissionDenied
        form = ReasonForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                changed = run(form.cleaned_data["reason"])
            except ServiceError as exc:
                self.message_user(request, f"{exc.message} ({exc.code})", messages.ERROR)
            else:
                self.message_user(request, done if changed else unchanged,
                                  messages.SUCCESS if changed else messages.WARNING)
            return HttpResponseRedirect(reverse("admin:risk_circuitbreaker_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "title": title, "intro": intro, "form": form, "submit_label": submit_label,
            "danger": True, "opts": self.model._meta, "objects": [], "form_url": "",
        }
        return TemplateResponse(request, "admin/ops/action_form.html", context)


@admin.register(CircuitBreakerEvent)
class CircuitBreakerEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "kind", "trigger", "reason", "actor")
    list_filter = ("kind", "trigger")
    search_fields = ("actor", "reason")


@admin.register(DailySpending)
class DailySpendingAdmin(ReadOnlyAdmin):
    list_display = ("day", "chain", "amount_spent", "transaction_count")
    list_filter = ("chain",)
    date_hierarchy = "day"


@admin.register(UserDailySpending)
class UserDailySpendingAdmin(ReadOnlyAdmin):
    list_display = ("day", "user", "amount_spent", "transaction_count")
    list_select_related = ("user",)
    search_fields = ("user__username",)


@admin.register(SpendReservation)
class SpendReservationAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "quote", "user", "state", "lamports", "source_chain",
                    "source_amount", "settled_at")
    list_filter = ("state", "source_chain")
    list_select_related = ("quote", "user")
    search_fields = ("=quote__id",)


@admin.register(TreasuryOutflow)
class TreasuryOutflowAdmin(ReadOnlyAdmin):
    list_display = ("at", "quote", "lamports")
    list_select_related = ("quote",)
    date_hierarchy = "at"


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "message", "delivered_at", "acknowledged_by")
    list_filter = ("kind", age_filter("created_at"))
