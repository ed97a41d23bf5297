"""Instruction builders for the programs the treasury may call, plus sandbox setup helpers.

Builders wrap solders / solana-py's `spl.token.instructions` so the executor and the quote
validator build instructions one way. The setup helpers (`create_mint`, `create_ata`,
`mint_to`, `setup_demo_usdc`) send real, signed transactions through a `SolanaBackend`
(the sandbox or a devnet), and `send_and_confirm` waits for the landed status. They are
meant for tests, demos and management commands, not for the payment path, which keeps
its own crash-safe send/retry state.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import CreateAccountParams, TransferParams, create_account, transfer
from solders.transaction import VersionedTransaction
from spl.token import instructions as token_ix
from spl.token import models as token_models
from spl.token.constants import TOKEN_2022_PROGRAM_ID, TOKEN_PROGRAM_ID

from .backend import SignatureState, SolanaBackend, SolanaRpcError
from .signer import TreasurySigner

SYSTEM_PROGRAM_ID = Pubkey.from_string("11111111111111111111111111111111")
COMPUTE_BUDGET_PROGRAM_ID = Pubkey.from_string("ComputeBudget111111111111111111111111111111")
ASSOCIATED_TOKEN_PROGRAM_ID = Pubkey.from_string("ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL")
MEMO_PROGRAM_ID = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")
MINT_SIZE = 82
TOKEN_ACCOUNT_SIZE = 165
LAMPORTS_PER_SIGNATURE = 5000

__all__ = [
    "ASSOCIATED_TOKEN_PROGRAM_ID",
    "COMPUTE_BUDGET_PROGRAM_ID",
    "MEMO_PROGRAM_ID",
    "SYSTEM_PROGRAM_ID",
    "TOKEN_2022_PROGRAM_ID",
    "TOKEN_PROGRAM_ID",
    "DemoUsdc",
    "associated_token_address",
    "build_transaction",
    "compute_unit_limit",
    "compute_unit_price",
    "create_ata",
    "create_ata_idempotent",
    "create_mint",
    "memo",
    "mint_to",
    "priority_fee",
    "send_and_confirm",
    "setup_demo_usdc",
    "sol_transfer",
    "token_transfer_checked",
]


# -- instruction builders -------------------------------------------------------------------


def sol_transfer(source: Pubkey, destination: Pubkey, lamports: int) -> Instruction:
    return transfer(TransferParams(from_pubkey=source, to_pubkey=destination, lamports=lamports))


def token_transfer_checked(
    *,
    source: Pubkey,
    mint: Pubkey,
    destination: Pubkey,
    owner: Pubkey,
    amount: int,
    decimals: int,
    program_id: Pubkey = TOKEN_PROGRAM_ID,
) -> Instruction:
    """SPL TransferChecked between two token accounts (the mint's decimals are enforced)."""
    return token_ix.transfer_checked(
        token_models.TransferCheckedParams(
            program_id=program_id,
            source=source,
            mint=mint,
            dest=destination,
            owner=owner,
            amount=amount,
            decimals=decimals,
        )
    )


def associated_token_address(owner: Pubkey, mint: Pubkey, program_id: Pubkey = TOKEN_PROGRAM_ID) -> Pubkey:
    return token_ix.get_associated_token_address(owner, mint, program_id)


def create_ata_idempotent(
    *, payer: Pubkey, owner: Pubkey, mint: Pubkey, program_id: Pubkey = TOKEN_PROGRAM_ID
) -> Instruction:
    """Create the owner's associated token account unless it exists (payer pays the rent)."""
    return token_ix.create_idempotent_associated_token_account(payer, owner, mint, program_id)


def memo(text: str | bytes, signers: Sequence[Pubkey] = ()) -> Instruction:
    """Memo program v2 instruction. Listed signers must sign (they are not made writable)."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    accounts = [AccountMeta(pubkey=s, is_signer=True, is_writable=False) for s in signers]
    return Instruction(MEMO_PROGRAM_ID, data, accounts)


def compute_unit_limit(units: int) -> Instruction:
    return set_compute_unit_limit(units)


def compute_unit_price(micro_lamports: int) -> Instruction:
    return set_compute_unit_price(micro_lamports)


def priority_fee(cu_limit: int, micro_lamports_per_cu: int) -> int:
    """ceil(limit × price / 10^6) lamports, as the runtime charges it."""
    return -(-cu_limit * micro_lamports_per_cu // 1_000_000)


def build_transaction(
    signer: TreasurySigner | Keypair,
    instructions: Sequence[Instruction],
    blockhash: Hash,
    extra_signers: Sequence[Keypair] = (),
) -> VersionedTransaction:
    """A v0 transaction paid by `signer`. extra_signers: setup only (the treasury refuses)."""
    payer = signer.pubkey if isinstance(signer, TreasurySigner) else signer.pubkey()
    message = MessageV0.try_compile(payer, list(instructions), [], blockhash)
    if isinstance(signer, TreasurySigner):
        if extra_signers:
            raise ValueError("a TreasurySigner signs alone")
        return signer.sign_transaction(message)
    return VersionedTransaction(message, [signer, *extra_signers])


# -- setup helpers (real transactions) ------------------------------------------------------


def send_and_confirm(
    backend: SolanaBackend,
    tx: VersionedTransaction,
    last_valid_block_height: int,
    *,
    timeout: float = 30.0,
    poll_interval: float = 0.05,
) -> SignatureState:
    """Send once and poll until the signature has a status; raise if it failed or expired."""
    signature = tx.signatures[0]
    backend.send_raw(bytes(tx))
    deadline = time.monotonic() + timeout
    while True:
        state = backend.signature_status(signature)
        if state is not None:
            if state.err is not None:
                raise SolanaRpcError(f"transaction {signature} failed: {state.err}", tx_error=state.err)
            return state
        if backend.block_height() > last_valid_block_height:
            # Re-check: it may have landed just before the blockhash expired.
            state = backend.signature_status(signature)
            if state is not None and state.err is None:
                return state
            raise SolanaRpcError(f"transaction {signature} expired without landing")
        if time.monotonic() > deadline:
            raise TimeoutError(f"transaction {signature} not confirmed within {timeout}s")
        time.sleep(poll_interval)


def _run(
    backend: SolanaBackend,
    payer: Keypair,
    instructions: Sequence[Instruction],
    extra_signers: Sequence[Keypair] = (),
) -> Signature:
    blockhash, last_valid = backend.latest_blockhash()
    tx = build_transaction(payer, instructions, blockhash, extra_signers)
    send_and_confirm(backend, tx, last_valid)
    return tx.signatures[0]


def create_mint(
    backend: SolanaBackend,
    payer: Keypair,
    *,
    mint_authority: Pubkey,
    decimals: int = 6,
    freeze_authority: Pubkey | None = None,
    mint: Keypair | None = None,
    program_id: Pubkey = TOKEN_PROGRAM_ID,
) -> Pubkey:
    """CreateAccount + InitializeMint2 in one transaction; returns the mint address."""
    mint = mint or Keypair()
    rent = backend.minimum_rent(MINT_SIZE)
    instructions = [
        create_account(
            CreateAccountParams(
                from_pubkey=payer.pubkey(),
                to_pubkey=mint.pubkey(),
                lamports=rent,
                space=MINT_SIZE,
                owner=program_id,
            )
        ),
        token_ix.initialize_mint2(
            token_models.InitializeMint2Params(
                decimals=decimals,
                program_id=program_id,
                mint=mint.pubkey(),
                mint_authority=mint_authority,
                freeze_authority=freeze_authority,
            )
        ),
    ]
    _run(backend, payer, instructions, [mint])
    return mint.pubkey()


def create_ata(
    backend: SolanaBackend,
    payer: Keypair,
    *,
    owner: Pubkey,
    mint: Pubkey,
    program_id: Pubkey = TOKEN_PROGRAM_ID,
) -> Pubkey:
    """The owner's associated token account, created (idempotently) by a real transaction."""
    instruction = create_ata_idempotent(payer=payer.pubkey(), owner=owner, mint=mint, program_id=program_id)
    _run(backend, payer, [instruction])
    return associated_token_address(owner, mint, program_id)


def mint_to(
    backend: SolanaBackend,
    mint_authority: Keypair,
    *,
    mint: Pubkey,
    destination: Pubkey,
    amount: int,
    decimals: int,
    program_id: Pubkey = TOKEN_PROGRAM_ID,
) -> Signature:
    """MintToChecked signed (and paid) by the mint authority."""
    instruction = token_ix.mint_to_checked(
        token_models.MintToCheckedParams(
            program_id=program_id,
            mint=mint,
            dest=destination,
            mint_authority=mint_authority.pubkey(),
            amount=amount,
            decimals=decimals,
        )
    )
    return _run(backend, mint_authority, [instruction])


@dataclass(frozen=True, slots=True)
class DemoUsdc:
    mint: Pubkey
    decimals: int
    treasury_token_account: Pubkey


def setup_demo_usdc(
    backend: SolanaBackend,
    *,
    mint_authority: Keypair,
    treasury: Pubkey,
    amount: int,
    decimals: int = 6,
    mint: Keypair | None = None,
) -> DemoUsdc:
    """A USDC-like mint, the treasury's ATA holding at least `amount`, all by transactions.

    Idempotent with a fixed `mint` keypair: an existing mint is reused, the ATA is created
    only if missing, and only the shortfall up to `amount` is minted (safe on every start).
    The mint authority pays for everything, so fund it first (airdrop on the sandbox).
    """
    mint = mint or Keypair()
    mint_address = mint.pubkey()
    existing = backend.account(mint_address)
    if existing is None:
        create_mint(
            backend,
            mint_authority,
            mint_authority=mint_authority.pubkey(),
            decimals=decimals,
            mint=mint,
        )
    elif existing.owner != TOKEN_PROGRAM_ID:
        raise ValueError(f"{mint_address} exists and is not an SPL Token mint")
    token_account = associated_token_address(treasury, mint_address)
    if backend.account(token_account) is None:
        create_ata(backend, mint_authority, owner=treasury, mint=mint_address)
    shortfall = amount - backend.token_balance(token_account)
    if shortfall > 0:
        mint_to(
            backend,
            mint_authority,
            mint=mint_address,
            destination=token_account,
            amount=shortfall,
            decimals=decimals,
        )
    return DemoUsdc(mint=mint_address, decimals=decimals, treasury_token_account=token_account)
