"""Shared fixtures. Tests run on real PostgreSQL: DATABASE_URL when set, else the embedded
server that config.settings starts in .data/ (never SQLite)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.factories import UserFactory


@pytest.fixture(autouse=True)
def _no_remembered_ledger_accounts():
    """Each test starts with no ledger accounts remembered (settlement.ledger.known_accounts):
    a test's rolled-back transaction removes accounts that its on_commit callbacks (run by
    django_capture_on_commit_callbacks) let the process remember, which production, where
    accounts are never deleted, does not do."""
    from settlement.ledger import known_accounts

    known_accounts.forget_all()


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


def client_for(user) -> APIClient:
    from users.authentication import token_issue

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=user)}")
    return client


@pytest.fixture
def api_client(user) -> APIClient:
    return client_for(user)


@pytest.fixture
def anon_client() -> APIClient:
    return APIClient()


@pytest.fixture
def handler_keeps_the_test_connection():
    """For tests calling a Django handler directly, as Django's test client does: the
    handler's request signals would close the test transaction's connection."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def fresh_channel_layers():
    """Transitions made in this process publish through a channel layer built for this test
    (a layer caches its database connection settings and event loop)."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


# -- Solana sandbox (LiteSVM JSON-RPC server) -------------------------------------------------


class SolanaSandbox:
    """A running sandbox chain for the test session, with the treasury funded.

    Attributes: `url` (also in settings.SOLANA_RPC_URL for the session), `admin`
    (`SandboxAdmin` for sandbox_* methods: faults, expire_blockhash, set_account...),
    `backend` (a `SolanaBackend` on it), `treasury` (Pubkey of settings.SOLANA_TREASURY_KEY),
    `usdc_mint` / `usdc_decimals` (6) / `treasury_usdc_account` (the treasury's ATA,
    funded with `TREASURY_USDC` base units; settings.SOLANA_USDC_MINT points at the mint).
    The chain is shared by the whole session: assert on balance deltas, not absolutes.
    """

    TREASURY_LAMPORTS = 1_000 * 10**9
    TREASURY_USDC = 1_000_000 * 10**6

    def __init__(self, url: str) -> None:
        from django.conf import settings
        from solders.keypair import Keypair

        from execution.solana import spl
        from execution.solana.backend import SolanaBackend
        from execution.solana.sandbox import SandboxAdmin
        from execution.solana.signer import KeypairSigner

        self.url = url
        self.admin = SandboxAdmin(url)
        self.backend = SolanaBackend(url)
        self.treasury = KeypairSigner.from_setting(settings.SOLANA_TREASURY_KEY).pubkey
        self.admin.airdrop(self.treasury, self.TREASURY_LAMPORTS)
        self.mint_authority = Keypair()
        self.admin.airdrop(self.mint_authority.pubkey(), 10 * 10**9)
        demo = spl.setup_demo_usdc(self.backend, mint_authority=self.mint_authority,
                                   treasury=self.treasury, amount=self.TREASURY_USDC)
        self.usdc_mint = demo.mint
        self.usdc_decimals = demo.decimals
        self.treasury_usdc_account = demo.treasury_token_account

    def balance(self, pubkey) -> int:
        return self.backend.balance(pubkey)

    def token_balance(self, token_account) -> int:
        return self.backend.token_balance(token_account)

    def funded_keypair(self, lamports: int = 10 * 10**9):
        """A fresh keypair holding `lamports` (a real airdrop transaction)."""
        from solders.keypair import Keypair

        keypair = Keypair()
        self.admin.airdrop(keypair.pubkey(), lamports)
        return keypair

    def usdc_account_for(self, owner) -> object:
        """`owner`'s USDC associated token account, created (empty) if missing."""
        from execution.solana import spl

        return spl.create_ata(self.backend, self.mint_authority, owner=owner, mint=self.usdc_mint)

    def mint_usdc(self, owner, amount: int):
        """Mint `amount` base units to `owner`'s USDC account (created if missing)."""
        from execution.solana import spl

        account = self.usdc_account_for(owner)
        spl.mint_to(self.backend, self.mint_authority, mint=self.usdc_mint, destination=account,
                    amount=amount, decimals=self.usdc_decimals)
        return account


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database, whose teardown first ends the sessions this process
    still holds on it: the PostgreSQL channel layer keeps pool connections of its own
    (outside Django's), and DROP DATABASE refuses while any is open, leaving the test
    database behind with a warning."""
    yield
    with django_db_blocker.unblock():
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.fixture(scope="session")
def solana_sandbox():
    """Session-wide LiteSVM sandbox on a free port; settings point at it for the session.

    Sets settings.SOLANA_RPC_URL and settings.SOLANA_USDC_MINT (restored afterwards), so
    code under test that reads settings talks to this chain.
    """
    from django.conf import settings

    from execution.solana.sandbox import serve_in_thread

    url, stop = serve_in_thread(port=0)
    saved = {name: getattr(settings, name) for name in ("SOLANA_RPC_URL", "SOLANA_USDC_MINT")}
    settings.SOLANA_RPC_URL = url
    try:
        sandbox = SolanaSandbox(url)
        settings.SOLANA_USDC_MINT = str(sandbox.usdc_mint)
        yield sandbox
    finally:
        for name, value in saved.items():
            setattr(settings, name, value)
        stop()
