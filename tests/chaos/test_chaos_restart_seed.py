"""`make run` restarted after the treasury spent some of its demo USDC: books still = chain.

Every start of `make run` seeds the sandbox treasury (`seed_demo` →
`treasury_seed_sandbox`). Whatever it puts on the chain must be on the books too, or the
scheduled reconciliation finds a mismatch and trips the circuit breaker (no more quotes).
Found by the soak against a restarted `make run`: the breaker tripped ten minutes in.
"""

from __future__ import annotations

import json
import uuid

import pytest
from solders.keypair import Keypair

from execution.solana import spl
from execution.solana.backend import SolanaBackend
from execution.solana.sandbox import serve_in_thread
from settlement.ledger import account_balance, account_code
from settlement.services.reconciliation import treasury_inventory_record
from settlement.services.treasury import treasury_seed_sandbox

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]


class BooksDriftOnRestart(AssertionError):
    pass


# Regression guard: every start once minted the treasury's USDC back up to the opening
# amount while the opening was booked once, so a restart put books and chain apart. The
# seed now funds and books together, once, booking what the chain holds.


def test_restarting_make_run_after_spending_usdc_keeps_books_equal_to_chain(settings):
    url, stop = serve_in_thread(port=0)  # a chain of its own: this test seeds it twice
    backend = SolanaBackend(url)
    try:
        identity = json.loads((settings.DATA_DIR / "sandbox_identity.json").read_text())
        settings.SOLANA_RPC_URL = url
        settings.SOLANA_USDC_MINT = str(Keypair.from_base58_string(identity["usdc_mint_key"]).pubkey())
        mint = Keypair.from_base58_string(identity["usdc_mint_key"]).pubkey()
        treasury = Keypair.from_base58_string(settings.SOLANA_TREASURY_KEY)
        treasury_usdc = spl.associated_token_address(treasury.pubkey(), mint)
        code = account_code("treasury", "solana", str(mint))

        treasury_seed_sandbox()  # first `make run`
        assert account_balance(code) == backend.token_balance(treasury_usdc)

        # The treasury sends 5 USDC (booked as it goes: books = chain).
        recipient = Keypair().pubkey()
        destination = spl.associated_token_address(recipient, mint)
        blockhash, last_valid = backend.latest_blockhash()
        tx = spl.build_transaction(treasury, [
            spl.create_ata_idempotent(payer=treasury.pubkey(), owner=recipient, mint=mint),
            spl.token_transfer_checked(source=treasury_usdc, mint=mint, destination=destination,
                                       owner=treasury.pubkey(), amount=5_000_000, decimals=6)], blockhash)
        spl.send_and_confirm(backend, tx, last_valid)
        treasury_inventory_record(chain="solana", asset=str(mint), amount=-5_000_000, reason="sent 5 USDC",
                                  actor="test", reference=f"test:{uuid.uuid4().hex}")
        assert account_balance(code) == backend.token_balance(treasury_usdc)

        treasury_seed_sandbox()  # `make run` again
        books, chain = account_balance(code), backend.token_balance(treasury_usdc)
        if books != chain:
            raise BooksDriftOnRestart(f"after the restart the chain holds {chain} USDC base units, "
                                      f"the books {books} (difference {chain - books})")
    finally:
        backend.close()
        stop()
