"""Two-factor admin sign-in (TOTP, by setting) and that no admin page reveals a key."""

from __future__ import annotations

import base64

import pytest
from django.contrib import admin
from django.core.management import call_command
from django.test import Client
from django.urls import NoReverseMatch, reverse
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from execution.models import Execution, ExecutionAttempt
from risk.models import AuditEvent
from settlement.models import Refund, Withdrawal
from tests.admin.admin_kit import (
    committed_quote,
    executed_quote,
    failed_quote,
    held_withdrawal,
    start_execution,
    unmatched_payment,
)
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


def token_for(device: TOTPDevice) -> str:
    return TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift).token()


@pytest.fixture
def operator_with_password(db):
    user = UserFactory(username="ops-otp", is_staff=True, is_superuser=True)
    user.set_password(PASSWORD)
    user.save()
    return user


def sign_in(client: Client, **extra: str):
    return client.post(reverse("admin:login"), {"username": "ops-otp", "password": PASSWORD,
                                                "next": reverse("admin:index"), **extra})


# --- two-factor sign-in ----------------------------------------------------------------------


def test_without_otp_setting_a_password_is_enough(settings, operator_with_password):
    settings.ADMIN_OTP_REQUIRED = False
    client = Client()
    assert "otp_token" not in client.get(reverse("admin:login")).content.decode()
    assert sign_in(client).status_code == 302
    assert client.get(reverse("admin:ops_dashboard")).status_code == 200


def test_with_otp_setting_password_alone_is_refused(settings, operator_with_password):
    settings.ADMIN_OTP_REQUIRED = True
    TOTPDevice.objects.create(user=operator_with_password, name="phone", confirmed=True)
    client = Client()
    page = client.get(reverse("admin:login")).content.decode()
    assert 'name="otp_token"' in page

    refused = sign_in(client)
    assert refused.status_code == 200 and "Please enter your OTP token" in refused.content.decode()
    wrong = sign_in(client, otp_token="000000")
    assert wrong.status_code == 200
    assert client.get(reverse("admin:ops_dashboard")).status_code == 302


def test_with_otp_setting_a_valid_token_signs_in(settings, operator_with_password):
    settings.ADMIN_OTP_REQUIRED = True
    device = TOTPDevice.objects.create(user=operator_with_password, name="phone", confirmed=True)
    client = Client()
    assert sign_in(client, otp_device=device.persistent_id, otp_token=token_for(device)).status_code == 302
    assert client.get(reverse("admin:ops_dashboard")).status_code == 200


def test_unverified_session_is_treated_as_not_staff_when_otp_is_required(settings, operator):
    settings.ADMIN_OTP_REQUIRED = True
    client = Client()
    client.force_login(operator)  # password-only session: no verified device
    response = client.get(reverse("admin:index"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_enrol_command_prints_otpauth_uri_and_audits(operator, capsys):
    call_command("admin_otp_enroll", operator.username)
    uri = capsys.readouterr().out.strip()
    device = TOTPDevice.objects.get(user=operator)
    assert uri.startswith("otpauth://totp/") and "secret=" in uri and device.confirmed
    assert AuditEvent.objects.filter(event_type="admin_otp_enrolled", entity_id=str(device.pk)).exists()


def test_enrol_page_confirms_a_device_with_its_first_token(admin_client, operator):
    page = admin_client.get(reverse("admin:ops_otp_enroll"))
    assert "otpauth://totp/" in page.content.decode()
    device = TOTPDevice.objects.get(user=operator, confirmed=False)
    admin_client.post(reverse("admin:ops_otp_enroll"), {"token": token_for(device)})
    device.refresh_from_db()
    assert device.confirmed
    assert AuditEvent.objects.filter(event_type="admin_otp_enrolled", actor="operator:ops-alice").exists()


def test_enrol_page_refuses_a_wrong_token(admin_client, operator):
    admin_client.get(reverse("admin:ops_otp_enroll"))
    wrong = admin_client.post(reverse("admin:ops_otp_enroll"), {"token": "123456"})
    assert "not valid" in wrong.content.decode()
    assert not TOTPDevice.objects.filter(user=operator, confirmed=True).exists()


# --- nothing in admin reveals a key ----------------------------------------------------------


def test_no_admin_page_reveals_a_key(settings, admin_client, operator, treasury):
    from users.authentication import token_issue

    user = UserFactory()
    executed_quote(user=user, treasury=treasury)
    failed_quote(user=user, treasury=treasury)
    unmatched_payment(treasury=treasury, amount=10**7)
    withdrawal = held_withdrawal(user=user, treasury=treasury)
    live = start_execution(committed_quote(user=user, treasury=treasury))
    signed_bytes = b"\x01SIGNED-TRANSACTION-BYTES-" + bytes(range(40))
    ExecutionAttempt.objects.create(execution=live, number=1, signature=live.signature,
                                    signed_transaction=signed_bytes, blockhash="B" * 44,
                                    last_valid_block_height=10)
    payout = "AAAAAgAAAABSIGNEDPAYOUTENVELOPEXDRNEVERSHOWN=="
    Withdrawal.objects.filter(pk=withdrawal.pk).update(signed_transaction=payout)
    Refund.objects.update(signed_transaction=payout)
    raw_token = token_issue(user=user)
    from users.models import ApiToken

    token_hash = ApiToken.objects.get(user=user).key_hash
    device = TOTPDevice.objects.create(user=operator, name="phone", confirmed=True)

    secrets = {
        "SOLANA_TREASURY_KEY": settings.SOLANA_TREASURY_KEY,
        "STELLAR_TREASURY_SECRET": settings.STELLAR_TREASURY_SECRET,
        "NEAR_TREASURY_KEY": settings.NEAR_TREASURY_KEY,
        "QUOTE_SIGNING_KEY": settings.QUOTE_SIGNING_KEY,
        "WEBHOOK_SECRET": settings.WEBHOOK_SECRET,
        "api token": raw_token,
        "api token hash": token_hash,
        "signed bytes (hex)": signed_bytes.hex(),
        "signed bytes (base64)": base64.b64encode(signed_bytes).decode(),
        "signed bytes (text)": "SIGNED-TRANSACTION-BYTES",
        "signed payout": payout,
        "TOTP key (hex)": device.key,
        "TOTP key (base32)": base64.b32encode(device.bin_key).decode(),
    }
    assert all(len(value) >= 16 for value in secrets.values()), "a secret is too short to search"

    urls = [reverse("admin:index"), reverse("admin:ops_dashboard")]
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        try:
            urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        except NoReverseMatch:
            continue
        for obj in model_admin.get_queryset(_request(operator))[:3]:
            urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]))
    assert reverse("admin:execution_execution_change", args=[live.pk]) in urls
    assert len(urls) > 40

    for url in urls:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        page = response.content.decode()
        for name, value in secrets.items():
            assert value not in page, f"{name} shown on {url}"
    assert Execution.objects.filter(pk=live.pk).exists()


def _request(user):
    from django.test import RequestFactory

    request = RequestFactory().get("/admin/")
    request.user = user
    return request
