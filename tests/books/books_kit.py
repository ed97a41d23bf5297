"""Helpers for the books tests: users with proven wallets and a deposit memo, real signed
deposits through the funding path, threads with their own connections, ledger readers."""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable
from typing import Any

import base58
from django.conf import settings
from django.db import connections
from django.utils import timezone
from nacl.signing import SigningKey
from stellar_sdk import Keypair, Network

from settlement.ledger import account_balance, account_code
from settlement.models import UserBalance
from tests.factories import UserFactory
from tests.fakes.horizon import make_stellar_payment
from tests.fakes.near_rpc import make_near_payment, near_keypair
from users.models import Wallet

TESTNET = Network.TESTNET_NETWORK_PASSPHRASE
NEAR_TREASURY = "solpay-treasury.test.near"
XLM = 10**7
NEAR = 10**24
IN_MEMORY_LAYER = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

_memo = itertools.count(random.randrange(10**12, 10**14))
_sequence = itertools.count(10_000)
_nonce = itertools.count(1_000)


def near_public_key(seed_hex: str) -> str:
    key = SigningKey(bytes.fromhex(seed_hex)[:32])
    return "ed25519:" + base58.b58encode(bytes(key.verify_key)).decode()


class Customer:
    """A user who proved a Stellar and a NEAR wallet, with a balance deposit memo."""

    def __init__(self) -> None:
        self.user = UserFactory(deposit_memo=next(_memo))
        self.stellar = Keypair.random()
        self.near = near_keypair()  # (signing key, public key, implicit account id)
        Wallet.objects.create(user=self.user, chain="stellar", address=self.stellar.public_key,
                              verified_at=timezone.now())
        Wallet.objects.create(user=self.user, chain="near", address=self.near[2],
                              public_key=self.near[1], verified_at=timezone.now())
        self.stellar_sequence = 100 << 32

    @property
    def near_account(self) -> str:
        return self.near[2]

    def stellar_payment(self, amount: int, *, memo_id: int | str | None = None) -> str:
        """A signed payment to the treasury (sequence tracked like a real account's)."""
        self.stellar_sequence += 1
        return make_stellar_payment(self.stellar, settings.STELLAR_TREASURY_ADDRESS, amount,
                                    memo_id=int(memo_id) if memo_id is not None else None,
                                    network_passphrase=settings.STELLAR_NETWORK_PASSPHRASE,
                                    sequence=self.stellar_sequence - 1)

    def near_payment(self, amount: int, *, quote_id: str | None = None, memo: str | None = None) -> str:
        signing_key, _, account = self.near
        return make_near_payment(account, signing_key, settings.NEAR_PAYMENT_ACCOUNT,
                                 quote_id=quote_id, memo=memo, deposit_yocto=amount,
                                 nonce=next(_nonce))


def pay(chain: str, signed: str, *, horizon: Any = None, near_rpc: Any = None, user: Any = None):
    """Through the one funding door, as the client would: sandbox sends the signed bytes;
    live lands them on the (fake) chain first and sends the hash."""
    from settlement.chains.near import decode_signed_transaction
    from settlement.services.funding import payment_submit

    if chain == "stellar":
        if horizon is not None:
            record = horizon.land(signed)
            return payment_submit(chain="stellar", source="api", tx_hash=record["hash"], user=user)
        return payment_submit(chain="stellar", source="api", envelope_xdr=signed, user=user)
    if near_rpc is not None:
        tx_hash = near_rpc.land(signed)
        sender = decode_signed_transaction(signed).transaction.signer_id
        return payment_submit(chain="near", source="api", tx_hash=tx_hash, sender=sender, user=user)
    return payment_submit(chain="near", source="api", signed_transaction_base64=signed, user=user)


def deposit(customer: Customer, chain: str, amount: int, **chains: Any):
    memo = customer.user.deposit_memo
    if chain == "stellar":
        return pay("stellar", customer.stellar_payment(amount, memo_id=memo), **chains)
    return pay("near", customer.near_payment(amount, memo=str(memo)), **chains)


def balance_of(user: Any, chain: str) -> tuple[int, int]:
    """(amount, locked) of the cached row (0, 0 when none)."""
    row = UserBalance.objects.filter(user=user, chain=chain).first()
    return (int(row.amount), int(row.locked)) if row else (0, 0)


def ledger_of(user: Any, asset: str) -> dict[str, int]:
    """The user's three accounts, as credits (what we owe them)."""
    scope = str(user.pk)
    return {kind: -account_balance(account_code(kind, scope, asset))
            for kind in ("user_balance", "user_locked", "withdrawals_payable")}


def run_threads(targets: list[Callable[[], Any]]) -> list[Any]:
    """Start every target at once (a barrier), each with its own DB connection; returns each
    result or the exception it raised."""
    barrier = threading.Barrier(len(targets))
    results: list[Any] = [None] * len(targets)

    def runner(index: int, target: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[index] = target()
        except BaseException as exc:  # surfaced to the test
            results[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=runner, args=(i, t), daemon=True) for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


# -- quotes for real Solana work ----------------------------------------------------------------


def sol_transfer_work(recipient: Any, lamports: int) -> list[dict[str, Any]]:
    from execution.services.chain import treasury_pubkey
    from execution.solana import spl
    from quotes.solana_tx import instructions_to_json

    return instructions_to_json([spl.sol_transfer(treasury_pubkey(), recipient, lamports)])


def usdc_transfer_work(sandbox: Any, recipient_account: Any, amount: int) -> list[dict[str, Any]]:
    from execution.solana import spl
    from quotes.solana_tx import instructions_to_json

    return instructions_to_json([spl.token_transfer_checked(
        source=sandbox.treasury_usdc_account, mint=sandbox.usdc_mint,
        destination=recipient_account, owner=sandbox.treasury, amount=amount,
        decimals=sandbox.usdc_decimals)])


def new_quote(customer: Customer, chain: str, instructions: list[dict[str, Any]]):
    """A priced, signed quote through the real quote engine (simulated on the sandbox)."""
    from quotes.services.quotes import quote_create

    return quote_create(user=customer.user, source_chain=chain, instructions=instructions,
                        estimated_compute_units=50_000, priority_fee_micro_lamports=0)


def pay_quote(customer: Customer, quote: Any, amount: int | None = None, **chains: Any):
    """Pay `amount` (default: the total) for the quote, with its memo, on its chain."""
    amount = int(quote.total_cost) if amount is None else amount
    if quote.source_chain == "stellar":
        return pay("stellar", customer.stellar_payment(amount, memo_id=quote.payment_memo), **chains)
    return pay("near", customer.near_payment(amount, quote_id=str(quote.pk)), **chains)
