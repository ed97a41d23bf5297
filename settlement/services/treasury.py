"""Treasury accounts per chain and the sandbox's opening inventory."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from django.conf import settings
from django.db import transaction

from config.chains import LAMPORTS_PER_SOL, NATIVE_DECIMALS, Chain
from settlement.ledger import Leg, account_code, ledger_post
from settlement.models import TreasuryAccount

SANDBOX_OPENING_SOL = 1_000 * LAMPORTS_PER_SOL


def treasury_solana_address() -> str:
    from solders.keypair import Keypair

    return str(Keypair.from_base58_string(settings.SOLANA_TREASURY_KEY).pubkey())


def _rpc(method: str, params: list[Any]) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(settings.SOLANA_RPC_URL, data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - configured URL
        reply = json.loads(resp.read())
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


@transaction.atomic
def treasury_accounts_ensure() -> None:
    for chain, asset, address in (
        (Chain.SOLANA, "SOL", treasury_solana_address()),
        (Chain.STELLAR, "XLM", settings.STELLAR_TREASURY_ADDRESS),
        (Chain.NEAR, "NEAR", settings.NEAR_PAYMENT_ACCOUNT),
    ):
        TreasuryAccount.objects.update_or_create(
            chain=chain, asset=asset,
            defaults={"address": address, "decimals": NATIVE_DECIMALS[asset]},
        )


def treasury_seed_sandbox() -> dict[str, Any]:
    """Fund the sandbox treasury once: an airdrop on the sandbox, booked as owners' equity."""
    treasury_accounts_ensure()
    address = treasury_solana_address()
    balance = int(_rpc("getBalance", [address])["value"])
    if balance == 0:
        _rpc("sandbox_airdrop", [address, SANDBOX_OPENING_SOL])
        balance = SANDBOX_OPENING_SOL
    with transaction.atomic():
        ledger_post(
            reference="sandbox:opening:solana:SOL", kind="inventory_funding",
            description="Opening sandbox inventory (airdrop)",
            legs=[Leg(account_code("treasury", "solana", "SOL"), "SOL", SANDBOX_OPENING_SOL),
                  Leg(account_code("inventory_funding", "solana", "SOL"), "SOL",
                      -SANDBOX_OPENING_SOL)],
        )
    return {"solana_treasury": address, "lamports": balance}
