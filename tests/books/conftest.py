"""Fixtures for the books tests: a fresh treasury identity per test (its Stellar secret and
NEAR key, so payouts are signed by the very keys the treasury address belongs to), sandbox
mode by default, and the stateful chain fakes for live mode. Helpers are in books_kit.py."""

from __future__ import annotations

import secrets

import pytest
from stellar_sdk import Keypair

from tests.books.books_kit import IN_MEMORY_LAYER, NEAR_TREASURY, TESTNET, near_public_key
from tests.books.ledger_fakes import LedgerHorizon, LedgerNearRpc


@pytest.fixture(autouse=True)
def _books_settings(settings):
    treasury = Keypair.random()
    settings.CHAIN_MODE, settings.IS_LIVE = "sandbox", False
    settings.STELLAR_NETWORK_PASSPHRASE = TESTNET
    settings.STELLAR_TREASURY_ADDRESS = treasury.public_key
    settings.STELLAR_TREASURY_SECRET = treasury.secret
    settings.NEAR_PAYMENT_ACCOUNT = NEAR_TREASURY
    settings.NEAR_TREASURY_KEY = secrets.token_bytes(32).hex()
    settings.CHAIN_HTTP_TIMEOUT_SECONDS = 2.0
    settings.CHANNEL_LAYERS = IN_MEMORY_LAYER
    settings.PRICE_SOURCE = "fixed"
    from django.core.cache import cache

    cache.clear()
    return settings


@pytest.fixture
def horizon(settings):
    """Live Stellar: a Horizon that keeps balances; the treasury account exists (1000 XLM)."""
    with LedgerHorizon(TESTNET) as server:
        settings.CHAIN_MODE, settings.IS_LIVE = "live", True
        settings.STELLAR_HORIZON_URL = server.url
        server.fund(settings.STELLAR_TREASURY_ADDRESS, 1_000 * 10**7)
        yield server


@pytest.fixture
def near_rpc(settings):
    """Live NEAR: a JSON-RPC node that keeps balances; the treasury holds 100 NEAR."""
    with LedgerNearRpc() as server:
        settings.CHAIN_MODE, settings.IS_LIVE = "live", True
        settings.NEAR_RPC_URL = server.url
        server.fund(NEAR_TREASURY, 100 * 10**24)
        server.add_key(NEAR_TREASURY, near_public_key(settings.NEAR_TREASURY_KEY))
        yield server


@pytest.fixture
def opened_books(solana_sandbox):
    """Treasury rows, and the books opened at what the (shared, session) chain holds now, so
    reconciliation can prove books = chain from here on."""
    from settlement.services.reconciliation import treasury_inventory_record
    from settlement.services.treasury import treasury_accounts_ensure

    solana_sandbox.admin.clear_faults()
    treasury_accounts_ensure()
    holdings = {"SOL": solana_sandbox.balance(solana_sandbox.treasury),
                str(solana_sandbox.usdc_mint): solana_sandbox.token_balance(
                    solana_sandbox.treasury_usdc_account)}
    for asset, amount in holdings.items():
        treasury_inventory_record(chain="solana", asset=asset, amount=amount, actor="test",
                                  reason="opening inventory", reference=f"opening:solana:{asset}")
    return solana_sandbox
