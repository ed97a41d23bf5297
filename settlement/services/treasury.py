"""Treasury accounts per chain and the sandbox's opening inventory."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.db import transaction

from config.chains import LAMPORTS_PER_SOL, NATIVE_DECIMALS, Chain
from settlement.ledger import Leg, account_code, ledger_post
from settlement.models import JournalEntry, TreasuryAccount

SANDBOX_OPENING_SOL = 1_000 * LAMPORTS_PER_SOL
SANDBOX_OPENING_USDC = 1_000_000  # whole USDC


def treasury_solana_address() -> str:
    from solders.keypair import Keypair

    return str(Keypair.from_base58_string(settings.SOLANA_TREASURY_KEY).pubkey())


@transaction.atomic
def treasury_accounts_ensure() -> None:
    rows = [
        (Chain.SOLANA, "SOL", treasury_solana_address(), NATIVE_DECIMALS["SOL"]),
        (Chain.STELLAR, "XLM", settings.STELLAR_TREASURY_ADDRESS, NATIVE_DECIMALS["XLM"]),
        (Chain.NEAR, "NEAR", settings.NEAR_PAYMENT_ACCOUNT, NATIVE_DECIMALS["NEAR"]),
    ]
    if settings.SOLANA_USDC_MINT:
        # Token inventory is booked per mint: the ledger asset is the mint address.
        rows.append((Chain.SOLANA, settings.SOLANA_USDC_MINT, treasury_solana_address(),
                     settings.SOLANA_USDC_DECIMALS))
    for chain, asset, address, decimals in rows:
        TreasuryAccount.objects.update_or_create(
            chain=chain, asset=asset, defaults={"address": address, "decimals": decimals})


def _opening_booked(asset: str) -> bool:
    return JournalEntry.objects.filter(reference=f"sandbox:opening:solana:{asset}").exists()


def _book_opening(asset: str, amount: int) -> None:
    ledger_post(
        reference=f"sandbox:opening:solana:{asset}", kind="inventory_funding",
        description="Opening sandbox inventory",
        legs=[Leg(account_code("treasury", "solana", asset), asset, amount),
              Leg(account_code("inventory_funding", "solana", asset), asset, -amount)],
    )


def treasury_seed_sandbox() -> dict[str, Any]:
    """Fund the sandbox treasury once (SOL airdrop, demo USDC minted by real transactions)
    and book it as owners' equity, so books and chain agree from the first block."""
    from solders.keypair import Keypair
    from solders.pubkey import Pubkey

    from execution.solana.backend import SolanaBackend
    from execution.solana.sandbox import SandboxAdmin
    from execution.solana.spl import associated_token_address, setup_demo_usdc

    treasury_accounts_ensure()
    treasury = Pubkey.from_string(treasury_solana_address())
    backend = SolanaBackend.from_url(settings.SOLANA_RPC_URL)
    admin = SandboxAdmin(settings.SOLANA_RPC_URL)
    summary: dict[str, Any] = {"solana_treasury": str(treasury)}
    try:
        # Fund and book together, once: after the first run the treasury's balance is
        # whatever the business made of it, and topping it up again unbooked would put
        # the books and the chain apart (the chaos suite restarts make run to prove it).
        # The opening entry books what the chain holds (a kept chain with a fresh database
        # books its existing inventory rather than a second airdrop).
        if not _opening_booked("SOL"):
            if backend.balance(treasury) == 0:
                admin.airdrop(treasury, SANDBOX_OPENING_SOL)
            _book_opening("SOL", backend.balance(treasury))
        summary["SOL"] = backend.balance(treasury) / LAMPORTS_PER_SOL

        if settings.SOLANA_USDC_MINT and not _opening_booked(settings.SOLANA_USDC_MINT):
            identity = json.loads((settings.DATA_DIR / "sandbox_identity.json").read_text())
            authority = Keypair.from_base58_string(identity["usdc_mint_authority_key"])
            if backend.balance(authority.pubkey()) < LAMPORTS_PER_SOL:
                admin.airdrop(authority.pubkey(), 10 * LAMPORTS_PER_SOL)
            opening = SANDBOX_OPENING_USDC * 10**settings.SOLANA_USDC_DECIMALS
            usdc = setup_demo_usdc(backend, mint_authority=authority, treasury=treasury,
                                   amount=opening, decimals=settings.SOLANA_USDC_DECIMALS,
                                   mint=Keypair.from_base58_string(identity["usdc_mint_key"]))
            _book_opening(settings.SOLANA_USDC_MINT,
                          backend.token_balance(usdc.treasury_token_account))
        if settings.SOLANA_USDC_MINT:
            token_account = associated_token_address(
                treasury, Pubkey.from_string(settings.SOLANA_USDC_MINT))
            summary["USDC_mint"] = settings.SOLANA_USDC_MINT
            summary["USDC"] = (backend.token_balance(token_account)
                               / 10**settings.SOLANA_USDC_DECIMALS)
    finally:
        backend.close()
    return summary
