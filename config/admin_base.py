"""Admin building blocks shared by the apps' admin modules.

Operators change nothing directly: every action calls the same service the API and the
workers call, under its own permission, and the service (or `audit_record` for the few
admin-only actions) writes the audit row naming the operator. The helpers here keep the
admin modules thin: an age filter, an intermediate form page for actions that need input
(a reason, a tx hash, a target), one loop that runs a service per selected row and reports
refusals, and read-only HTML renderings of history and ledger entries.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import ValidationError
from django.db.models import Model, Prefetch, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from config.chains import NATIVE_DECIMALS, format_amount
from config.errors import ServiceError

if TYPE_CHECKING:
    from users.models import User


class ReadOnlyAdmin(admin.ModelAdmin):
    """History and money rows: operators read them; only services write them."""

    change_form_template = "admin/ops/change_form.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def operator_actor(request: HttpRequest) -> str:
    """The audit actor for an admin action: the same `operator:<username>` the risk services
    write, so one search finds everything an operator did."""
    from risk.services.breaker import operator_actor as risk_operator_actor

    return risk_operator_actor(request.user)  # type: ignore[arg-type]


def operator_user(request: HttpRequest) -> User:
    """The signed-in operator (admin views only run for authenticated staff)."""
    return cast("User", request.user)


# --- filters -------------------------------------------------------------------------------

class AgeFilter(admin.SimpleListFilter):
    """How long ago a row was created (or last moved): the question about stuck work."""

    title = "age"
    parameter_name = "age"
    field_name = "created_at"
    BUCKETS: dict[str, tuple[dt.timedelta | None, dt.timedelta | None]] = {
        "lt1h": (None, dt.timedelta(hours=1)),
        "1h-24h": (dt.timedelta(hours=1), dt.timedelta(hours=24)),
        "gt24h": (dt.timedelta(hours=24), None),
        "gt7d": (dt.timedelta(days=7), None),
    }

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("lt1h", "less than 1 hour"), ("1h-24h", "1 to 24 hours"),
                ("gt24h", "more than 24 hours"), ("gt7d", "more than 7 days")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        bucket = self.BUCKETS.get(self.value() or "")
        if bucket is None:
            return queryset
        older_than, younger_than = bucket
        now = timezone.now()
        if older_than is not None:
            queryset = queryset.filter(**{f"{self.field_name}__lte": now - older_than})
        if younger_than is not None:
            queryset = queryset.filter(**{f"{self.field_name}__gt": now - younger_than})
        return queryset


def age_filter(field_name: str, title: str = "age") -> type[AgeFilter]:
    """An AgeFilter on another timestamp (e.g. `updated_at` for "stuck since")."""
    return type(f"AgeFilter_{field_name}", (AgeFilter,),
                {"field_name": field_name, "title": title, "parameter_name": f"age_{field_name}"})


class UserFilter(admin.SimpleListFilter):
    """`?user=<id>`: one user's rows. Offers no list of users (there are too many to list);
    the user column of every list links here instead."""

    title = "user"
    parameter_name = "user"
    field_name = "user_id"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        value = self.value()
        if not value:
            return []
        from users.models import User

        try:
            user = User.objects.filter(pk=value).first()
        except (ValueError, ValidationError):
            return []
        return [(value, user.get_username() if user else value)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        value = self.value()
        if not value:
            return queryset
        try:
            return queryset.filter(**{self.field_name: uuid.UUID(value)})
        except ValueError:
            return queryset.none()


def user_filter(field_name: str) -> type[UserFilter]:
    return type(f"UserFilter_{field_name}", (UserFilter,), {"field_name": field_name})


class IdSearchMixin:
    """Search by a pasted UUID (quote id, execution id, ...) as an exact match on the
    `id_search_fields`, alongside the usual `search_fields`; a term that is not a UUID is
    only searched the usual way (an exact UUID lookup would reject it)."""

    id_search_fields: tuple[str, ...] = ("id",)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
                           ) -> tuple[QuerySet[Any], bool]:
        found, may_have_duplicates = super().get_search_results(  # type: ignore[misc]
            request, queryset, search_term)
        term = search_term.strip()
        try:
            wanted = uuid.UUID(term)
        except ValueError:
            return found, may_have_duplicates
        by_id = Q()
        for name in self.id_search_fields:
            by_id |= Q(**{name: wanted})
        return found | queryset.filter(by_id), True


def admin_link(obj: Model | None, text: Any = None) -> str:
    """A link to a row's admin page (or "—")."""
    if obj is None:
        return "—"
    opts = obj._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text if text is not None else obj)


def user_list_link(modeladmin: admin.ModelAdmin, user: Any) -> str:
    """The user's name, linking to this list filtered to them."""
    if user is None:
        return "—"
    return format_html('<a href="?user={}">{}</a>', user.pk, user.get_username())


# --- actions -------------------------------------------------------------------------------

class ReasonForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}), max_length=2000,
        help_text="Required. Recorded in the audit log with your name.")

    def clean_reason(self) -> str:
        reason: str = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason


def action_form_page(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any], *,
                     form: forms.Form, title: str, intro: str, submit_label: str,
                     danger: bool = False) -> TemplateResponse:
    """The intermediate page of an action that needs input: it lists the selected rows and
    posts the form back to the same action (Django's delete-confirmation pattern)."""
    opts = modeladmin.model._meta
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "intro": intro,
        "objects": list(queryset[:50]),
        "object_count": queryset.count(),
        "form": form,
        "action_name": request.POST.get("action", ""),
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "submit_label": submit_label,
        "danger": danger,
        "opts": opts,
        "app_label": opts.app_label,
        "form_url": "",
    }
    return TemplateResponse(request, "admin/ops/action_form.html", context)


def bound_action_form(request: HttpRequest, form_class: type[forms.Form]) -> forms.Form:
    """The action's form: bound when the intermediate page posted it (`post=yes`)."""
    if request.POST.get("post") == "yes":
        return form_class(request.POST)
    return form_class()


def run_per_row(modeladmin: admin.ModelAdmin, request: HttpRequest, rows: Iterable[Any],
                call: Callable[[Any], Any], *, done: str) -> int:
    """Call a service once per selected row. A refusal (ServiceError: wrong state, missing
    permission, a limit) is reported for that row and the others still run; the service's
    own transaction keeps each row all-or-nothing."""
    succeeded = 0
    for row in rows:
        try:
            call(row)
        except ServiceError as exc:
            modeladmin.message_user(request, f"{row}: {exc.message} ({exc.code})", messages.ERROR)
        else:
            succeeded += 1
    if succeeded:
        modeladmin.message_user(request, done.format(count=succeeded), messages.SUCCESS)
    return succeeded


def redirect_to_changelist(modeladmin: admin.ModelAdmin) -> HttpResponse:
    from django.http import HttpResponseRedirect

    opts = modeladmin.model._meta
    return HttpResponseRedirect(reverse(f"{modeladmin.admin_site.name}:{opts.app_label}_"
                                        f"{opts.model_name}_changelist"))


# --- read-only renderings ------------------------------------------------------------------

def amount_display(amount: Any, asset: str) -> str:
    """Smallest units with the whole-unit reading beside them: `1500000000 (1.5 SOL)`."""
    if amount is None:
        return "—"
    decimals = NATIVE_DECIMALS.get(asset)
    if decimals is None:
        return f"{int(amount)} {asset}"
    return f"{int(amount)} ({format_amount(int(amount), decimals)} {asset})"


def transitions_table(rows: Sequence[Any], *, hash_field: str = "tx_hash") -> SafeString:
    """A state machine's history, oldest first: when, from → to, who, tx, details."""
    if not rows:
        return mark_safe("<p>No transitions recorded.</p>")  # noqa: S308 - constant
    body = format_html_join(
        "", "<tr><td>{}</td><td>{} → <b>{}</b></td><td>{}</td><td><code>{}</code></td>"
            "<td><code>{}</code></td></tr>",
        ((f"{row.at:%Y-%m-%d %H:%M:%S}", row.from_status or "∅", row.to_status, row.actor,
          getattr(row, hash_field, "") or "", _details_text(row.details)) for row in rows))
    return format_html(
        '<table class="ops-table"><thead><tr><th>at (UTC)</th><th>transition</th><th>actor</th>'
        "<th>tx</th><th>details</th></tr></thead><tbody>{}</tbody></table>", body)


def ledger_table(entries: Sequence[Any]) -> SafeString:
    """Journal entries with their postings (debit positive, credit negative).

    Expects `postings` prefetched with their accounts (one query for all entries)."""
    if not entries:
        return mark_safe("<p>No ledger entries.</p>")  # noqa: S308 - constant
    rows = []
    for entry in entries:
        for index, posting in enumerate(entry.postings.all()):
            head = (f"{entry.created_at:%Y-%m-%d %H:%M:%S}", entry.kind, entry.reference) \
                if index == 0 else ("", "", "")
            rows.append((*head, posting.account.code, amount_display(posting.amount, posting.asset)))
    body = format_html_join(
        "", "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td>"
            '<td class="num">{}</td></tr>', rows)
    return format_html(
        '<table class="ops-table"><thead><tr><th>at (UTC)</th><th>kind</th><th>reference</th>'
        '<th>account</th><th class="num">amount (+debit / −credit)</th></tr></thead>'
        "<tbody>{}</tbody></table>", body)


def _details_text(details: Any) -> str:
    if not details:
        return ""
    if isinstance(details, dict):
        return ", ".join(f"{key}={value}" for key, value in details.items())
    return str(details)


def audit_history(*, entity_type: str, entity_id: Any) -> SafeString:
    """A row's audit trail, oldest first: the history of things with no transition table
    (refunds, withdrawals, payments)."""
    from risk.models import AuditEvent

    events = list(AuditEvent.objects.filter(entity_type=entity_type, entity_id=str(entity_id))
                  .order_by("created_at"))
    if not events:
        return mark_safe("<p>No audit events.</p>")  # noqa: S308 - constant
    body = format_html_join(
        "", "<tr><td>{}</td><td><b>{}</b></td><td>{}</td><td><code>{}</code></td></tr>",
        ((f"{e.created_at:%Y-%m-%d %H:%M:%S}", e.event_type, e.actor, _details_text(e.details))
         for e in events))
    return format_html(
        '<table class="ops-table"><thead><tr><th>at (UTC)</th><th>event</th><th>actor</th>'
        "<th>details</th></tr></thead><tbody>{}</tbody></table>", body)


def entries_with_postings(entries: QuerySet[Any]) -> list[Any]:
    """Journal entries (oldest first) with postings and accounts in one extra query each."""
    from settlement.models import Posting

    return list(entries.order_by("created_at").prefetch_related(
        Prefetch("postings", Posting.objects.select_related("account").order_by("-amount", "pk"))))
