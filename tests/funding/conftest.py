"""Funding fixtures: chain mode switches and the fake chains on real sockets.
Helpers (signed payments, quotes, webhooks) are in tests/funding/kit.py."""

from __future__ import annotations

import pytest
from stellar_sdk import Keypair

from tests.fakes.horizon import FakeHorizon
from tests.fakes.near_rpc import FakeNearRpc, near_keypair
from tests.funding.kit import IN_MEMORY_LAYER, NEAR_PAYMENT_ACCOUNT, TESTNET


@pytest.fixture(autouse=True)
def _funding_settings(settings):
    """Sandbox by default, fresh treasury identities, an in-process channel layer."""
    settings.CHAIN_MODE = "sandbox"
    settings.IS_LIVE = False
    settings.STELLAR_NETWORK_PASSPHRASE = TESTNET
    settings.STELLAR_TREASURY_ADDRESS = Keypair.random().public_key
    settings.NEAR_PAYMENT_ACCOUNT = NEAR_PAYMENT_ACCOUNT
    settings.CHAIN_HTTP_TIMEOUT_SECONDS = 2.0
    settings.CHANNEL_LAYERS = IN_MEMORY_LAYER
    settings.WEBHOOK_SECRET = "whsec-funding-tests"
    from django.core.cache import cache

    cache.clear()  # throttle counters start from zero
    return settings


@pytest.fixture
def treasury(settings) -> str:
    return settings.STELLAR_TREASURY_ADDRESS


@pytest.fixture
def payer() -> Keypair:
    return Keypair.random()


@pytest.fixture
def near_payer():
    """(signing key, public key text, implicit account id): an implicit account proves its key."""
    return near_keypair()


@pytest.fixture
def horizon(settings):
    with FakeHorizon(TESTNET) as server:
        settings.CHAIN_MODE, settings.IS_LIVE = "live", True
        settings.STELLAR_HORIZON_URL = server.url
        yield server


@pytest.fixture
def near_rpc(settings):
    with FakeNearRpc() as server:
        settings.CHAIN_MODE, settings.IS_LIVE = "live", True
        settings.NEAR_RPC_URL = server.url
        yield server
