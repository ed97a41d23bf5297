"""Fixtures for quote tests: a funded sandbox chain, fixed prices, users with wallets,
and builders for real Solana work (solders instructions and messages)."""

from __future__ import annotations

import base64

import pytest
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message, MessageV0, to_bytes_versioned
from solders.pubkey import Pubkey
from stellar_sdk import Keypair as StellarKeypair

from execution.solana import spl
from tests.conftest import client_for
from tests.factories import UserFactory, WalletFactory


@pytest.fixture
def quote_settings(settings, solana_sandbox):
    """Sandbox chain + fixed prices (SOL 150, XLM 0.10, NEAR 3, USDC 1)."""
    settings.PRICE_SOURCE = "fixed"
    settings.SANDBOX_PRICES_USD = {"SOL": "150.00", "XLM": "0.10", "NEAR": "3.00", "USDC": "1.00"}
    settings.SOLANA_USDC_MINT = str(solana_sandbox.usdc_mint)
    return settings


@pytest.fixture
def chain(solana_sandbox):
    return solana_sandbox


@pytest.fixture
def stellar_user(db):
    user = UserFactory()
    WalletFactory(user=user, chain="stellar", address=StellarKeypair.random().public_key)
    return user


@pytest.fixture
def near_user(db):
    user = UserFactory()
    WalletFactory(user=user, chain="near", address=f"{user.username[:20]}.testnet")
    return user


@pytest.fixture
def client(stellar_user):
    return client_for(stellar_user)


class Work:
    """Builders for the Solana work a client asks us to quote."""

    def __init__(self, chain) -> None:
        self.chain = chain
        self.treasury: Pubkey = chain.treasury

    def sol_transfer(self, lamports: int, to: Pubkey | None = None) -> list[Instruction]:
        return [spl.sol_transfer(self.treasury, to or Pubkey.new_unique(), lamports)]

    def usdc_transfer(self, amount: int, to_owner: Pubkey | None = None) -> list[Instruction]:
        owner = to_owner or Pubkey.new_unique()
        destination = spl.associated_token_address(owner, self.chain.usdc_mint)
        return [
            spl.create_ata_idempotent(payer=self.treasury, owner=owner, mint=self.chain.usdc_mint),
            spl.token_transfer_checked(source=self.chain.treasury_usdc_account,
                                       mint=self.chain.usdc_mint, destination=destination,
                                       owner=self.treasury, amount=amount,
                                       decimals=self.chain.usdc_decimals),
        ]

    def memo(self, text: str = "hello from stellar") -> list[Instruction]:
        return [spl.memo(text)]

    def legacy_b64(self, instructions: list[Instruction], payer: Pubkey | None = None) -> str:
        message = Message.new_with_blockhash(instructions, payer or self.treasury, Hash.default())
        return base64.b64encode(bytes(message)).decode()

    def v0_b64(self, instructions: list[Instruction], payer: Pubkey | None = None) -> str:
        message = MessageV0.try_compile(payer or self.treasury, instructions, [], Hash.default())
        return base64.b64encode(to_bytes_versioned(message)).decode()

    @staticmethod
    def as_json(instructions: list[Instruction]) -> list[dict]:
        return [
            {"program_id": str(ix.program_id),
             "accounts": [{"pubkey": str(a.pubkey), "is_signer": a.is_signer,
                           "is_writable": a.is_writable} for a in ix.accounts],
             "data_base64": base64.b64encode(bytes(ix.data)).decode()}
            for ix in instructions
        ]


@pytest.fixture
def work(chain) -> Work:
    return Work(chain)


@pytest.fixture
def treasury_keypair(settings) -> Keypair:
    return Keypair.from_base58_string(settings.SOLANA_TREASURY_KEY)


@pytest.fixture(autouse=True)
def forget_recorded_prices():
    """The recorder remembers, per process, what it already stored; each test's database
    starts empty, so each test starts with a recorder that remembers nothing."""
    from quotes.services import prices

    with prices._seen_lock:
        prices._last_seen.clear()
    yield
