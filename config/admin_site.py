"""The operators' back office: Django admin on our own AdminSite.

- Staff only, and with ADMIN_OTP_REQUIRED (on by default in live mode) only staff whose
  session was verified by a TOTP device (django-otp): the login form then asks for the
  token, and an unverified session is treated like a non-staff one. The setting is read on
  every request, so tests (and an operator flipping it) need no restart.
- Extra pages: the treasury dashboard (`dashboard/`) and TOTP enrolment for the signed-in
  operator (`otp/enroll/`). The bootstrap for the first operator in live mode, who cannot
  reach admin without a device yet, is `manage.py admin_otp_enroll <username>`.

Installed through `OpsAdminConfig` in INSTALLED_APPS, so `admin.site` is this site and
every app's `@admin.register` lands here.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.admin import AdminSite
from django.contrib.admin.apps import AdminConfig
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path, reverse


class OpsAdminConfig(AdminConfig):
    default_site = "config.admin_site.OpsAdminSite"


def otp_required() -> bool:
    return bool(settings.ADMIN_OTP_REQUIRED)


class OpsAdminSite(AdminSite):
    site_header = "solpay operations"
    site_title = "solpay operations"
    index_title = "Back office"
    index_template = "admin/ops/index.html"
    # Money tables need the width; the index lists every model anyway.
    enable_nav_sidebar = False

    # AdminSite reads these two on every login request; properties make the OTP step
    # follow the current setting.
    @property
    def login_form(self) -> type[Any]:  # type: ignore[override]
        # Imported here: this module is loaded while the app registry is still filling.
        from django.contrib.admin.forms import AdminAuthenticationForm

        if otp_required():
            from django_otp.admin import OTPAdminAuthenticationForm

            return OTPAdminAuthenticationForm
        return AdminAuthenticationForm

    @property
    def login_template(self) -> str | None:  # type: ignore[override]
        return "otp/admin111/login.html" if otp_required() else None

    def has_permission(self, request: HttpRequest) -> bool:
        if not super().has_permission(request):
            return False
        if not otp_required():
            return True
        is_verified = getattr(request.user, "is_verified", None)
        return bool(is_verified and is_verified())

    def get_urls(self) -> list[URLResolver | URLPattern]:
        extra: list[URLResolver | URLPattern] = [
            path("dashboard/", self.admin_view(self.dashboard_view), name="ops_dashboard"),
            path("otp/enroll/", self.admin_view(self.otp_enroll_view), name="ops_otp_enroll"),
        ]
        return extra + super().get_urls()

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        context = super().each_context(request)
        context["ops_otp_required"] = otp_required()
        return context

    # --- pages --------------------------------------------------------------------------

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        from config.admin_dashboard import treasury_dashboard

        user = request.user
        context = {
            **self.each_context(request),
            "title": "Treasury dashboard",
            "dashboard": treasury_dashboard(),
            "can_trip": user.has_perm("risk.trip_breaker"),
            "can_reset": user.has_perm("risk.reset_breaker"),
            "can_reconcile": user.has_perm("settlement.add_reconciliationreport"),
        }
        return TemplateResponse(request, "admin/ops/dashboard.html", context)

    def otp_enroll_view(self, request: HttpRequest) -> HttpResponse:
        """Enrol an authenticator for the signed-in operator: show the otpauth URI once for
        a new, unconfirmed device, and confirm it with a first valid token."""
        from django_otp.plugins.otp_totp.models import TOTPDevice

        from config.admin_base import operator_actor
        from risk.audit import audit_record

        user = request.user
        device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-pk").first()
        form = TokenForm(request.POST or None)
        if request.method == "POST" and device is not None and form.is_valid():
            if device.verify_token(form.cleaned_data["token"]):
                with transaction.atomic():
                    device.confirmed = True
                    device.save(update_fields=["confirmed"])
                    audit_record(event_type="admin_otp_enrolled", actor=operator_actor(request),
                                 entity_type="otp_device", entity_id=device.pk, user_id=user.pk,
                                 details={"device": device.name})
                messages.success(request, "Authenticator confirmed. It is now required at sign-in "
                                          "whenever two-factor sign-in is on.")
                return HttpResponseRedirect(reverse(f"{self.name}:index"))
            form.add_error("token", "That code is not valid for this authenticator.")
        if device is None:
            device = TOTPDevice.objects.create(user=user, name=f"{user.get_username()} authenticator",
                                               confirmed=False)
        context = {
            **self.each_context(request),
            "title": "Two-factor sign-in: enrol an authenticator",
            "config_url": device.config_url,
            "confirmed_devices": TOTPDevice.objects.filter(user=user, confirmed=True).count(),
            "form": form,
        }
        return TemplateResponse(request, "admin/ops/otp_enroll.html", context)


class TokenForm(forms.Form):
    token = forms.CharField(max_length=16, label="Code from the authenticator",
                            widget=forms.TextInput(attrs={"autocomplete": "one-time-code"}))
