"""Admin fixtures: operators with and without the action permissions, logged-in clients,
and sandbox settings (fresh Stellar treasury identity, in-process channel layer)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from stellar_sdk import Keypair

from tests.factories import UserFactory

TESTNET = "Test SDF Network ; September 2015"


@pytest.fixture(autouse=True)
def _admin_settings(settings):
    settings.CHAIN_MODE = "sandbox"
    settings.IS_LIVE = False
    settings.ADMIN_OTP_REQUIRED = False
    settings.STELLAR_NETWORK_PASSPHRASE = TESTNET
    settings.STELLAR_TREASURY_ADDRESS = Keypair.random().public_key
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    return settings


@pytest.fixture
def treasury(settings) -> str:
    return settings.STELLAR_TREASURY_ADDRESS


def staff_with(*perms: str, username: str | None = None):
    """A staff user holding exactly these permissions ("app.codename")."""
    user = UserFactory(is_staff=True, **({"username": username} if username else {}))
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label,
                                                         codename=codename))
    return type(user).objects.get(pk=user.pk)  # fresh: no cached permissions


VIEW_ALL = ("quotes.view_quote", "execution.view_execution", "settlement.view_fundingpayment",
            "settlement.view_refund", "settlement.view_withdrawal", "settlement.view_settlement",
            "risk.view_circuitbreaker", "risk.view_auditevent")


@pytest.fixture
def operator(db):
    """A superuser: every permission."""
    return UserFactory(username="ops-alice", is_staff=True, is_superuser=True)


@pytest.fixture
def viewer(db):
    """Staff who may look at everything and act on nothing."""
    return staff_with(*VIEW_ALL, username="ops-viewer")


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def admin_client(operator) -> Client:
    return login(operator)


@pytest.fixture
def viewer_client(viewer) -> Client:
    return login(viewer)
